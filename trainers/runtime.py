"""What both trainers share: the ``run`` config section, a training session (rank, device,
checkpoints, logs) that works under Ray Train or in this process, EMA, and the launcher.

A checkpoint is a folder ``step_<N>`` holding ``model.pt`` (written by rank 0: weights, optimiser,
EMA, step, config) and one ``rank_<r>.pt`` per worker (its data position and RNG states). Under
Ray Train every worker reports its own files and Ray merges them into one folder under
``<storage_path>/<name>/``; re-running the same command (same ``run.name`` and
``run.storage_path``) makes Ray Train hand the latest one back, as does a worker failure within
``run.max_failures``. In-process runs (``run.use_ray: false``) keep the same folders under
``<storage_path>/<name>/checkpoints/``.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import apply_overrides

log = logging.getLogger(__name__)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_preset_config(model_cls, presets: dict[str, dict], config: str | None, overrides: list[str] | None = None):
    """``config`` is a preset name or a YAML path (whose optional ``preset:`` key picks the starting
    point); overrides go last."""
    data: dict[str, Any] = {}
    if config in presets:
        data = {"preset": config, **copy.deepcopy(presets[config])}  # overrides must not edit the preset
    elif config:
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: expected a mapping at the top level")
        name = loaded.get("preset")
        if name is not None and name not in presets:
            raise ValueError(f"{config}: unknown preset {name!r} (known: {', '.join(presets)})")
        data = _merge(copy.deepcopy(presets.get(name, {})), loaded)
    return model_cls.model_validate(apply_overrides(data, overrides or []))



class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="run name: folder under storage_path")
    storage_path: str = Field("runs", description="checkpoints and logs: local path or URI (s3://, gs://) Ray Train can write")
    use_ray: bool = Field(True, description="false: train in this process without Ray (debugging, tests)")
    address: str | None = Field(None, description="Ray cluster address; default: an embedded local Ray")
    num_workers: int = Field(1, ge=1, description="data-parallel workers (DDP)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=0, description="Ray Train FailureConfig: worker-group restarts from the last checkpoint")
    keep_checkpoints: int = Field(3, ge=1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1 - self.decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict({**module.state_dict(), **self.shadow})


class Session:
    """Rank, device, checkpoints and metric logging for one training worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def latest_checkpoint(self) -> Path | None:
        raise NotImplementedError

    def save(self, step: int, files: dict[str, Any], metrics: dict[str, float]) -> None:
        """Write ``files`` (name → object for torch.save) as this worker's part of checkpoint ``step``."""
        raise NotImplementedError

    def report(self, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def log_dir(self) -> Path:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _write_files(folder: Path, files: dict[str, Any]) -> None:
    for name, obj in files.items():
        torch.save(obj, folder / name)


class LocalSession(Session):
    """One process, no Ray: checkpoints in ``<storage>/<name>/checkpoints/step_<N>`` (atomic rename)."""

    def __init__(self, run: RunSection):
        self.root = Path(run.storage_path).expanduser().resolve() / run.name
        self.ckpt_root = self.root / "checkpoints"
        self.keep = run.keep_checkpoints
        self.device = torch.device("cuda" if run.use_gpu and torch.cuda.is_available() else "cpu")

    def latest_checkpoint(self) -> Path | None:
        done = sorted(self.ckpt_root.glob("step_*[0-9]")) if self.ckpt_root.is_dir() else []
        return done[-1] if done else None

    def save(self, step: int, files: dict[str, Any], metrics: dict[str, float]) -> None:
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        final = self.ckpt_root / f"step_{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=self.ckpt_root))
        _write_files(tmp, files)
        if final.exists():  # a re-run after a crash between rename and prune: same step, same content
            shutil.rmtree(final)
        os.replace(tmp, final)  # a kill leaves either no folder or a whole one
        for old in sorted(self.ckpt_root.glob("step_*[0-9]"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def report(self, metrics: dict[str, float]) -> None:
        pass

    def log_dir(self) -> Path:
        return self.root / "tensorboard"


class RaySession(Session):
    """Inside a Ray Train worker: checkpoints go through ``ray.train.report``."""

    def __init__(self, run: RunSection):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run = run
        self._restored: tempfile.TemporaryDirectory | None = None

    def latest_checkpoint(self) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        self._restored = tempfile.TemporaryDirectory(prefix="cnas-restore-")
        name = os.path.basename(ckpt.path.rstrip("/")) or "checkpoint"
        return Path(ckpt.to_directory(os.path.join(self._restored.name, name)))

    def save(self, step: int, files: dict[str, Any], metrics: dict[str, float]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="cnas-ckpt-") as tmp:
            _write_files(Path(tmp), files)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step_{step:08d}")

    def report(self, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report(metrics)

    def log_dir(self) -> Path:
        storage = self.run.storage_path
        if "://" in storage:  # TensorBoard files go next to the worker; metrics also reach Ray's results
            return Path(tempfile.gettempdir()) / "cnas-tensorboard" / self.run.name
        return Path(storage).expanduser().resolve() / self.run.name / "tensorboard"

    def close(self) -> None:
        if self._restored is not None:
            self._restored.cleanup()


def current_session(run: RunSection) -> Session:
    if run.use_ray:
        return RaySession(run)
    return LocalSession(run)


class MetricLog:
    """TensorBoard scalars (rank 0 only) plus a plain ``metrics.jsonl`` beside them."""

    def __init__(self, session: Session, enabled: bool = True):
        self.writer = None
        self.jsonl = None
        if enabled and session.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            d = session.log_dir()
            d.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(d))
            self.jsonl = open(d / "metrics.jsonl", "a", encoding="utf-8")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        import json

        if self.writer is None:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()


def launch(train_fn: Callable[[dict], Any], config: dict, run: RunSection) -> Any:
    """Run ``train_fn(config)`` on ``run.num_workers`` Ray Train workers (DDP), or in this process."""
    if not run.use_ray:
        if run.num_workers != 1:
            raise ValueError("run.use_ray=false trains in this process: set run.num_workers=1")
        return train_fn(config)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=run.address, log_to_driver=True)
    storage = run.storage_path if "://" in run.storage_path else str(Path(run.storage_path).expanduser().resolve())
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=run.num_workers, use_gpu=run.use_gpu,
                                     resources_per_worker={"CPU": run.cpus_per_worker, **({"GPU": 1} if run.use_gpu else {})}),
        run_config=RunConfig(name=run.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=run.keep_checkpoints)),
    )
    return trainer.fit()
