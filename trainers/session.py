"""A training session — rank, device, checkpoint storage and metric reports of one worker — under
Ray Train or in this process, and the launcher that starts the workers.

What a checkpoint holds and how a run resumes from one: ``trainers/checkpoint.py``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from trainers.run_config import RunSection

log = logging.getLogger(__name__)


class Session:
    """Rank, device, checkpoints and metric logging for one training worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    restore_s: float | None = None  # seconds the restore took (fetch + load; set by ``restore_checkpoint``)

    def latest_checkpoint(self) -> Path | None:
        """The folder of the newest checkpoint of this run, or None for a fresh run."""
        raise NotImplementedError

    def save(self, step: int, files: dict[str, Any], metrics: dict[str, float]) -> None:
        """Write ``files`` (name → object for torch.save) as this worker's part of checkpoint ``step``."""
        raise NotImplementedError

    def report(self, metrics: dict[str, float]) -> None:
        """Hand ``metrics`` to the launcher without a checkpoint."""
        raise NotImplementedError

    def log_dir(self) -> Path:
        """Where this worker writes TensorBoard files and ``metrics.jsonl``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the session holds (restored checkpoint copies)."""


def _write_files(folder: Path, files: dict[str, Any]) -> None:
    for name, obj in files.items():
        torch.save(obj, folder / name)


class LocalSession(Session):
    """One process, no Ray: checkpoints in ``<storage>/<name>/checkpoints/step_<N>`` (atomic rename)."""

    def __init__(self, run: RunSection):
        self.root = Path(run.storage_path).expanduser().resolve() / run.name
        self.ckpt_root = self.root / "checkpoints"
        self.keep = run.keep_checkpoints
        if run.use_gpu and not torch.cuda.is_available():  # not a silent CPU run on a "GPU" job
            raise RuntimeError("train.use_gpu is true but this worker has no CUDA device (set use_gpu: false to train on CPU)")
        self.device = torch.device("cuda" if run.use_gpu else "cpu")

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
        """The newest checkpoint as a local folder holding ``model.pt`` and this worker's own
        ``rank_<r>.pt`` only: the other workers' files are not fetched, and ``model.pt`` is fetched
        once per node (by the node's first worker, into a folder the node's workers share; the others
        wait for it and link it), not once per worker."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        local_rank = ray.train.get_context().get_local_rank()
        name = os.path.basename(ckpt.path.rstrip("/")) or "checkpoint"
        digest = hashlib.sha1(f"{ckpt.path}|{self.run.name}".encode()).hexdigest()[:12]
        shared = Path(tempfile.gettempdir()) / "cnas-restore" / f"{name}-{digest}"
        if local_rank == 0:
            _fetch(ckpt, "model.pt", shared)
        else:
            _wait_for(shared / "model.pt", self.run.restore_timeout_s)
        self._restored = tempfile.TemporaryDirectory(prefix="cnas-restore-")
        mine = Path(self._restored.name) / name
        mine.mkdir()
        os.link(shared / "model.pt", mine / "model.pt")
        own = f"rank_{self.rank}.pt"
        if _exists(ckpt, own):
            _fetch(ckpt, own, mine)
        self._shared = shared if local_rank == 0 else None
        return mine

    def save(self, step: int, files: dict[str, Any], metrics: dict[str, float]) -> None:
        """Write this worker's files, then hand them to Ray Train: with ``run.async_checkpoints`` the
        upload to ``run.storage_path`` runs in the background (Ray's ``CheckpointUploadMode.ASYNC``,
        the local copy deleted once uploaded) and training goes on; the step waits only for the
        local write."""
        import ray.train
        from ray.train import CheckpointUploadMode

        tmp = tempfile.mkdtemp(prefix="cnas-ckpt-")
        _write_files(Path(tmp), files)
        mode = CheckpointUploadMode.ASYNC if self.run.async_checkpoints else CheckpointUploadMode.SYNC
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step_{step:08d}",
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=True)

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
        if getattr(self, "_shared", None) is not None:  # the node's copy: every worker has long read it
            shutil.rmtree(self._shared, ignore_errors=True)


def _exists(ckpt: Any, name: str) -> bool:
    import pyarrow.fs as pafs

    return ckpt.filesystem.get_file_info(f"{ckpt.path.rstrip('/')}/{name}").type == pafs.FileType.File


def _fetch(ckpt: Any, name: str, folder: Path) -> None:
    """Copy one file of a Ray checkpoint (any storage Ray Train writes to) into ``folder``, atomically."""
    import pyarrow.fs as pafs

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / name).exists():
        return
    part = folder / f".{name}.{os.getpid()}.part"
    pafs.copy_files(f"{ckpt.path.rstrip('/')}/{name}", str(part), source_filesystem=ckpt.filesystem,
                    destination_filesystem=pafs.LocalFileSystem())
    os.replace(part, folder / name)


def _wait_for(path: Path, timeout_s: float, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: the node's first worker did not fetch the checkpoint within {timeout_s:.0f} s "
                               "(run.restore_timeout_s)")
        time.sleep(poll_s)


def current_session(run: RunSection) -> Session:
    """The session of this worker: a Ray Train worker's, or this process's when ``run.use_ray`` is off."""
    if run.use_ray:
        return RaySession(run)
    return LocalSession(run)


def wrap_ddp(module: torch.nn.Module, session: Session) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when there are several workers."""
    if session.world_size == 1:
        return module
    ids = [session.device.index] if session.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def worker_resources(run: RunSection) -> dict[str, float]:
    """What ``run.num_workers`` training workers need from the cluster together (Ray Train also
    needs its small trainer actor, left out here)."""
    need = {"CPU": run.num_workers * run.cpus_per_worker}
    if run.use_gpu:
        need["GPU"] = float(run.num_workers)
    return need


def wait_for_resources(need: dict[str, float], available: Callable[[], dict[str, float]], timeout_s: float,
                       poll_s: float = 10.0, echo: Callable[[str], None] | None = None,
                       clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once ``available()`` (the cluster's total resources) covers ``need``; while an
    autoscaler brings nodes up, wait up to ``timeout_s`` seconds, saying what is missing every
    minute. Then a RuntimeError that names what is missing (Ray Train itself would wait forever)."""
    echo = echo or log.warning
    start, said = clock(), -math.inf
    while True:
        have = available()
        missing = {k: v for k, v in need.items() if have.get(k, 0.0) < v}
        if not missing:
            return
        waited = clock() - start
        lacking = ", ".join(f"{need[k]:g} {k} (the cluster has {have.get(k, 0.0):g})" for k in missing)
        if waited >= timeout_s:
            hint = (" (set run.use_gpu=false to train on CPU, or fewer run.num_workers)" if "GPU" in missing else
                    " (fewer run.num_workers or run.cpus_per_worker)")
            where = f"after waiting {waited:.0f} s" if timeout_s > 0 else "on an embedded Ray (no autoscaler to add nodes)"
            raise RuntimeError(f"the training workers need {lacking}: not there {where}{hint}; "
                               "run.resource_timeout_s sets how long a cluster may take to scale up")
        if waited - said >= 60:
            echo(f"waiting for the cluster to scale up: the workers need {lacking} "
                 f"({waited:.0f} of {timeout_s:.0f} s, run.resource_timeout_s)")
            said = waited
        sleep(min(poll_s, max(timeout_s - waited, 0.0)))


def launch(train_fn: Callable[[dict], Any], config: dict, run: RunSection) -> Any:
    """Run ``train_fn(config)`` on ``run.num_workers`` Ray Train workers (DDP), or in this process.
    Relative local paths in ``config`` are made absolute here, in the driver (workers have a working
    directory of their own)."""
    from trainers.run_config import resolve_paths

    config = resolve_paths(config)
    if not run.use_ray:
        if run.num_workers != 1:
            raise ValueError("run.use_ray=false trains in this process: set run.num_workers=1")
        return train_fn(config)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=run.address, log_to_driver=True)
    # an embedded Ray has no autoscaler: what it lacks now it will never get
    wait_for_resources(worker_resources(run), ray.cluster_resources, run.resource_timeout_s if run.address else 0.0)
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
