"""Metrics of a training run: averaged over the workers, written to TensorBoard and
``metrics.jsonl`` by rank 0, and the per-step bookkeeping that also decides when to checkpoint."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import torch

from trainers.checkpoint import save_checkpoint
from trainers.session import Session

log = logging.getLogger(__name__)


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


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:<i> (<GPU name>)``: what a metric or report was measured on."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


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
        """Log ``metrics`` at ``step`` (nothing on the other ranks)."""
        if self.writer is None:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()

    def event(self, name: str, step: int, **info: Any) -> None:
        """Note an event (a start, a resume) in ``metrics.jsonl``, with the wall-clock time."""
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"event": name, "step": step, "time": time.time(), **info}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()


class Reporter:
    """After each step: every ``log_every`` steps average the metrics over workers and log them;
    every ``checkpoint_every`` steps and at the last step also write a checkpoint."""

    def __init__(self, session: Session, log_every: int, checkpoint_every: int, total_steps: int,
                 resumed_from: int | None = None, info: dict[str, Any] | None = None):
        """``info``: facts of the run written with its "started"/"resumed" event (e.g. how it was initialised)."""
        self.session, self.log_every, self.checkpoint_every, self.total = session, log_every, checkpoint_every, total_steps
        self.metrics_log = MetricLog(session)
        # where the numbers were measured: a "GPU" run that fell back to CPU shows here
        restored = {} if session.restore_s is None else {"restore_s": round(session.restore_s, 3)}
        self.metrics_log.event("resumed" if resumed_from is not None else "started", resumed_from or 0,
                               device=device_name(session.device), world_size=session.world_size, torch=torch.__version__,
                               **restored, **(info or {}))
        self.tic, self.tic_step = time.perf_counter(), resumed_from or 0

    def after_step(self, step: int, terms: dict[str, torch.Tensor], extra: dict[str, float], position: dict[str, int],
                   payload: Callable[[], dict[str, Any]], force: bool = False) -> dict[str, float] | None:
        """The metrics logged at ``step`` (None when it is not a logging step; ``force``: log now,
        e.g. with validation terms); ``payload`` is only called at checkpoint steps, so other steps
        do not gather state dicts."""
        ckpt = step % self.checkpoint_every == 0 or step == self.total
        if not (ckpt or force or step % self.log_every == 0):
            return None
        metrics = mean_metrics(terms, self.session)
        done = step - self.tic_step
        metrics.update(step=step, epoch=position["epoch"], **extra,
                       steps_per_s=done / max(time.perf_counter() - self.tic, 1e-9))
        if ckpt:  # the checkpoint first, so its row says how long it held the step
            metrics["checkpoint/save_s"] = save_checkpoint(self.session, step, position, dict(metrics), payload)
        else:
            self.session.report(metrics)
        self.tic, self.tic_step = time.perf_counter(), step
        self.metrics_log.write(step, metrics)
        if self.session.rank == 0:
            log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k != "step"))
        return metrics

    def close(self) -> None:
        self.metrics_log.close()
