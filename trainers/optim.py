"""What both training loops share around the optimiser step: the learning-rate schedule (linear
warm-up, then constant or cosine decay), gradient accumulation over micro-batches, and dataset
normalisation statistics measured once over several batches and summed across workers.

The learning rate is a pure function of the step (``lr_at``), set before every optimiser step, so a
resumed run continues the schedule exactly without storing a scheduler's state.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.distributed as dist
from pydantic import Field

from schemas.settings import Settings


class OptimSettings(Settings):
    """Schedule, accumulation and statistics settings (part of each trainer's ``train`` section)."""

    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up from 0 over this many steps (per phase)")
    lr_schedule: str = Field("constant", pattern=r"^(constant|cosine)$",
                             description="after warm-up: constant, or cosine decay to min_lr_ratio × lr at the last step")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine: the final learning rate as a share of lr")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step (effective batch = batch_size × "
                                                 "grad_accum × workers)")
    stats_batches: int = Field(8, ge=1, description="batches (per worker, summed over workers) the normalisation "
                                                     "statistics are measured on, once, before training; stored with "
                                                     "the checkpoint")


def lr_at(step: int, steps: int, lr: float, s: OptimSettings) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a phase of ``steps`` steps."""
    if s.warmup_steps and step < s.warmup_steps:
        return lr * (step + 1) / s.warmup_steps
    if s.lr_schedule == "constant":
        return lr
    span = max(steps - s.warmup_steps, 1)
    progress = min(max(step - s.warmup_steps, 0) / max(span - 1, 1), 1.0)
    return lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def accumulation(module: torch.nn.Module, n: int) -> Iterator[tuple[int, contextlib.AbstractContextManager]]:
    """``n`` micro-steps: (index, context to run its forward/backward in). Under DDP every micro-step
    but the last skips the gradient all-reduce (``no_sync``), so accumulating costs no extra traffic."""
    for i in range(n):
        last = i == n - 1
        sync_off = getattr(module, "no_sync", None)
        yield i, (contextlib.nullcontext() if last or sync_off is None else sync_off())


def checkpointed(fn, *args: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``fn(*args)``; with ``enabled`` (and gradients on) its activations are not kept but recomputed
    in the backward pass (``torch.utils.checkpoint``): the same values and gradients, less memory."""
    if enabled and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class RunningMoments:
    """Sums for a per-dimension mean and standard deviation over many batches (float64), reduced
    across workers: every worker ends with the statistics of all the data any of them saw."""

    def __init__(self, dims: int | tuple[int, ...] = ()):
        shape = (dims,) if isinstance(dims, int) else dims
        self.n = torch.zeros((), dtype=torch.float64)
        self.s1 = torch.zeros(shape, dtype=torch.float64)
        self.s2 = torch.zeros(shape, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """``x`` (N, *dims): N more samples."""
        x = x.detach().to("cpu", torch.float64)
        self.n += x.shape[0]
        self.s1 += x.sum(0)
        self.s2 += (x * x).sum(0)

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            packed = torch.cat([self.n.reshape(1), self.s1.reshape(-1), self.s2.reshape(-1)])
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
            packed = packed.to(device)
            dist.all_reduce(packed)
            packed = packed.cpu()
            k = self.s1.numel()
            self.n, self.s1, self.s2 = packed[0], packed[1:1 + k].reshape(self.s1.shape), packed[1 + k:].reshape(self.s2.shape)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (unbiased) standard deviation; raises when no sample was added."""
        if self.n < 2:
            raise ValueError("normalisation statistics need at least two samples")
        mean = self.s1 / self.n
        var = (self.s2 - self.n * mean * mean) / (self.n - 1)
        return mean.float(), var.clamp(min=0).sqrt().float()
