"""Held-out validation for both trainers: a fixed set of windows from ``data.val_urls`` (the
release's ``val`` split), scored every ``train.val_every`` steps on a fixed grid of diffusion
timesteps with fixed noise, so that two validation points differ only by the weights.

    val = HeldOut.load(loader_cfg, max_batches=8, device=session.device)
    metrics = val.evaluate(lambda batch, t: model.loss(batch, t=t), timesteps=val_grid(1000, 8), seed=0)

Training loss moves with the random timesteps of each batch; the validation loss does not, which
is what makes a curve of it readable and a "best" checkpoint meaningful. The windows are decoded
once (the first window of each clip, no shuffling) and kept in memory on the CPU.

The best checkpoint (lowest ``val/loss``) is written by rank 0 to ``<storage>/<name>/best/``
(``model.pt`` without optimiser state, plus ``best.json``); ``cnas eval … --checkpoint
<storage>/<name>/best`` scores it. Remote storage (``s3://``…) receives the same folder through
``pyarrow.fs``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from trainers.data import LoaderConfig, make_loader
from trainers.run_config import ValidationSettings
from trainers.session import Session

log = logging.getLogger(__name__)


def val_grid(noise_steps: int, points: int) -> list[int]:
    """``points`` timesteps spread evenly over the schedule (bin centres: neither 0 nor T−1 only)."""
    return sorted({min(noise_steps - 1, int((k + 0.5) * noise_steps / points)) for k in range(points)})


class HeldOut:
    """The validation windows of one worker, decoded once."""

    def __init__(self, batches: list[dict[str, Any]], device: torch.device):
        self.batches, self.device = batches, device

    @classmethod
    def load(cls, cfg: LoaderConfig, max_batches: int, device: torch.device) -> "HeldOut":
        """The first ``max_batches`` batches of ``cfg.urls`` (first window per clip, file order)."""
        fixed = replace(cfg, shuffle_buffer=0, shuffle_shards=False, random_window=False, epoch_samples=None, num_workers=0)
        batches = []
        for batch in make_loader(fixed, epoch=0):
            batches.append(batch)
            if len(batches) >= max_batches:
                break
        return cls(batches, device)

    def __len__(self) -> int:
        return len(self.batches)

    @torch.no_grad()
    def evaluate(self, score: Callable[[dict[str, Any], torch.Tensor], dict[str, torch.Tensor]], timesteps: list[int],
                 seed: int = 0) -> dict[str, torch.Tensor]:
        """Mean of ``score(batch, t)`` (a dict of scalar tensors) over every batch and grid timestep,
        with every random draw inside ``score`` (noise, negatives) seeded by (seed, batch, t).
        NaN for every key when this worker has no validation window (left out of the mean over workers)."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        devices = [self.device] if self.device.type == "cuda" else []
        for i, raw in enumerate(self.batches):
            batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in raw.items()}
            B = next(len(v) for v in batch.values() if torch.is_tensor(v))
            for t in timesteps:
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed * 1_000_003 + i * 1009 + t)
                    terms = score(batch, torch.full((B,), t, dtype=torch.long, device=self.device))
                for k, v in terms.items():
                    v = float(v)
                    if not math.isnan(v):
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
        return {k: torch.tensor(sums[k] / counts[k]) for k in sums}


class BestCheckpoint:
    """Keeps ``<run>/best/`` at the weights with the lowest validation loss seen so far (rank 0);
    the record survives a resume (``best.json``)."""

    def __init__(self, session: Session, run_root: str):
        self.session = session
        self.remote = run_root if "://" in run_root else None
        self.folder = (Path(tempfile.mkdtemp(prefix="cnas-best-")) if self.remote else Path(run_root)) / "best"
        self.best = math.inf
        record = self.folder / "best.json"
        if self.remote is None and record.is_file():
            self.best = json.loads(record.read_text())["val_loss"]

    def offer(self, step: int, val_loss: float, payload: Callable[[], dict[str, Any]]) -> bool:
        """Save ``payload()`` as the best checkpoint when ``val_loss`` beats the best so far."""
        if self.session.rank != 0 or not val_loss < self.best:
            return False
        self.best = val_loss
        state = {k: v for k, v in payload().items() if not k.startswith("opt")}  # weights and config only
        tmp = self.folder.with_name(".best.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save({"step": step, **state}, tmp / "model.pt")
        (tmp / "best.json").write_text(json.dumps({"step": step, "val_loss": val_loss}) + "\n")
        if self.folder.exists():
            for f in self.folder.iterdir():
                f.unlink()
            self.folder.rmdir()
        tmp.rename(self.folder)  # a reader never sees a half-written best checkpoint
        if self.remote:
            import pyarrow.fs

            pyarrow.fs.copy_files(str(self.folder), f"{self.remote.rstrip('/')}/best")
        log.info("step %d: new best val/loss %.4g -> %s", step, val_loss, self.remote or self.folder)
        return True


def run_root(storage_path: str, name: str) -> str:
    """Where a run's own files go: the local run folder, or the URI of a remote one."""
    if "://" in storage_path:
        return f"{storage_path.rstrip('/')}/{name}"
    return str(Path(storage_path).expanduser().resolve() / name)


class Validator:
    """Validation of one training worker: when it is due, the held-out metrics (the same keys on
    every worker, NaN where this worker holds no window) and the best-checkpoint bookkeeping."""

    def __init__(self, session: Session, loader_cfg: LoaderConfig | None, settings: ValidationSettings,
                 noise_steps: int, seed: int, storage_path: str, name: str):
        self.every, self.seed = settings.val_every, seed
        self.enabled = loader_cfg is not None and settings.val_every > 0
        self.grid = val_grid(noise_steps, settings.val_timesteps)
        self.held_out = HeldOut.load(loader_cfg, settings.val_batches, session.device) if self.enabled else None
        if self.enabled and session.rank == 0 and session.world_size == 1 and not len(self.held_out):
            raise ValueError(f"data.val_urls {loader_cfg.urls!r} holds no usable {loader_cfg.window_frames}-frame window "
                             f"({loader_cfg.view} view)")
        self.best = BestCheckpoint(session, run_root(storage_path, name)) if self.enabled else None

    def due(self, step: int, total_steps: int) -> bool:
        return self.enabled and (step % self.every == 0 or step == total_steps)

    def run(self, score: Callable[[dict[str, Any], torch.Tensor], dict[str, torch.Tensor]], keys: tuple[str, ...],
            timesteps: list[int] | None = None) -> dict[str, torch.Tensor]:
        """``score`` averaged over the held-out windows and the timestep grid, as ``val/<key>``."""
        got = self.held_out.evaluate(score, self.grid if timesteps is None else timesteps, self.seed)
        return {f"val/{k}": got.get(k, torch.tensor(float("nan"))) for k in keys}
