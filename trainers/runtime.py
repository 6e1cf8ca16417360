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
import time
from pathlib import Path
from typing import Any, Callable, Iterator

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


class DataSection(Section):
    """What every trainer reads from the shards (each trainer adds its own keys)."""

    urls: str | list[str] | None = Field(None, description="shards: paths, brace pattern, or a release's <split>.index.json")
    window_frames: int = Field(50, ge=2, description="frames per training window at 25 fps")
    batch_size: int = Field(16, ge=1, description="per worker")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    shuffle_buffer: int = Field(256, ge=0)


def trainable_state(model: torch.nn.Module, frozen_prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict without the weights that were loaded from a path and stay frozen."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(frozen_prefixes)}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], frozen_prefixes: tuple[str, ...]) -> None:
    """Load a ``trainable_state``; anything else missing or unexpected is a config mismatch."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(frozen_prefixes)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}")


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


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch RNG states, plus the CUDA state of this worker's own GPU only (all
    workers of a node see every GPU; touching the others would open contexts on them)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float, skip_prefixes: tuple[str, ...] = ()):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()
                       if v.dtype.is_floating_point and not k.startswith(skip_prefixes)}

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

    def event(self, name: str, step: int) -> None:
        import json

        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"event": name, "step": step, "time": time.time()}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()


def batch_stream(lcfg, position: dict[str, int], rank: int) -> Iterator[dict[str, Any]]:
    """Endless batches from ``trainers.data.make_loader``, epoch after epoch; ``position`` (epoch,
    batches) is kept current so a checkpoint can resume the data exactly where it was."""
    from trainers.data import make_loader

    while True:
        got = 0
        for batch in make_loader(lcfg, epoch=position["epoch"], skip=position["batches"]):
            got += 1
            position["batches"] += 1
            yield batch
        if got == 0 and position["batches"] == 0:
            raise RuntimeError(f"training worker {rank} got no usable {lcfg.window_frames}-frame windows ({lcfg.view} view) "
                               f"from the shards {lcfg.urls!r}: every worker needs at least one shard with such clips")
        position["epoch"] += 1
        position["batches"] = 0


def wrap_ddp(module: torch.nn.Module, session: Session) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when there are several workers."""
    if session.world_size == 1:
        return module
    ids = [session.device.index] if session.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def trainable_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def mean_metrics(terms: dict[str, torch.Tensor], session: Session) -> dict[str, float]:
    """Scalar terms averaged over all workers, NaN meaning "not measured here" (left out of the
    mean; a term no worker measured is dropped). Every worker must pass the same keys."""
    import torch.distributed as dist

    keys = sorted(terms)
    vec = torch.stack([torch.as_tensor(terms[k]).detach().float().reshape(()).to(session.device) for k in keys])
    seen = ~torch.isnan(vec)
    both = torch.stack([torch.where(seen, vec, torch.zeros_like(vec)), seen.float()])
    if session.world_size > 1:
        dist.all_reduce(both)
    return {k: (both[0, i] / both[1, i]).item() for i, k in enumerate(keys) if both[1, i] > 0}


def restore_checkpoint(session: Session, targets: dict[str, Any]) -> tuple[int, dict[str, int], dict[str, Any] | None]:
    """Load the newest checkpoint into ``targets`` (name → optimiser, ``EMA``, or (module, loader)
    pair) and this worker's RNG states. Returns (step, data position, the rank-0 payload or None)."""
    ckpt = session.latest_checkpoint()
    if ckpt is None:
        return 0, {"epoch": 0, "batches": 0}, None
    state = torch.load(ckpt / "model.pt", map_location=session.device, weights_only=False)
    for name, target in targets.items():
        if isinstance(target, EMA):
            target.shadow = {k: v.to(session.device) for k, v in state[name].items()}
        elif isinstance(target, tuple):
            target[1](target[0], state[name])
        else:
            target.load_state_dict(state[name])
    mine = ckpt / f"rank_{session.rank}.pt"
    if mine.exists() and state.get("world_size") == session.world_size:
        rank_state = torch.load(mine, weights_only=False)
        position = rank_state["position"]
        set_rng_state(rank_state["rng"], session.device)
    else:  # another number of workers: the data split changed, start the next epoch afresh
        position = {"epoch": state.get("epoch", 0) + 1, "batches": 0}
    if session.rank == 0:
        log.warning("resumed from %s at step %d", ckpt.name, state["step"])
    return state["step"], position, state


def save_checkpoint(session: Session, step: int, position: dict[str, int], metrics: dict[str, float],
                    payload: Callable[[], dict[str, Any]]) -> None:
    """Checkpoint ``step``: every worker writes its data position and RNG states, rank 0 also
    ``payload()`` (weights, optimisers, …) with the step, world size and epoch."""
    files: dict[str, Any] = {f"rank_{session.rank}.pt": {"position": dict(position), "rng": rng_state(session.device)}}
    if session.rank == 0:
        files["model.pt"] = {"step": step, "world_size": session.world_size, "epoch": position["epoch"], **payload()}
    session.save(step, files, metrics)


class Reporter:
    """After each step: every ``log_every`` steps average the metrics over workers and log them;
    every ``checkpoint_every`` steps and at the last step also write a checkpoint."""

    def __init__(self, session: Session, log_every: int, checkpoint_every: int, total_steps: int,
                 resumed_from: int | None = None):
        self.session, self.log_every, self.checkpoint_every, self.total = session, log_every, checkpoint_every, total_steps
        self.metrics_log = MetricLog(session)
        if resumed_from is not None:  # an audit trail of restarts next to the metrics
            self.metrics_log.event("resumed", resumed_from)
        self.tic, self.tic_step = time.perf_counter(), resumed_from or 0

    def after_step(self, step: int, terms: dict[str, torch.Tensor], extra: dict[str, float], position: dict[str, int],
                   payload: Callable[[], dict[str, Any]]) -> dict[str, float] | None:
        ckpt = step % self.checkpoint_every == 0 or step == self.total
        if not (ckpt or step % self.log_every == 0):
            return None
        metrics = mean_metrics(terms, self.session)
        done = step - self.tic_step
        metrics.update(step=step, epoch=position["epoch"], **extra,
                       steps_per_s=done / max(time.perf_counter() - self.tic, 1e-9))
        self.tic, self.tic_step = time.perf_counter(), step
        self.metrics_log.write(step, metrics)
        if self.session.rank == 0:
            log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k != "step"))
        if ckpt:
            save_checkpoint(self.session, step, position, metrics, payload)
        else:
            self.session.report(metrics)
        return metrics

    def close(self) -> None:
        self.metrics_log.close()


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (with model.pt), or the newest ``step_*`` under a run folder."""
    p = Path(path).expanduser()
    if (p / "model.pt").is_file():
        return p
    steps = sorted(q.parent for q in p.glob("**/step_*[0-9]/model.pt"))
    if not steps:
        raise FileNotFoundError(f"no checkpoint (step_*/model.pt) under {p}")
    return max(steps, key=lambda q: q.name)


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
