"""Checkpoints of a training run: what they hold, how a run resumes from one, and the random state
that makes a resumed run continue exactly as an uninterrupted one would.

A checkpoint is a folder ``step_<N>`` holding ``model.pt`` (written by rank 0: weights, optimiser,
EMA, step, config) and one ``rank_<r>.pt`` per worker (its data position and RNG states). Under
Ray Train every worker reports its own files and Ray merges them into one folder under
``<storage_path>/<name>/``; re-running the same command (same ``run.name`` and
``run.storage_path``) makes Ray Train hand the latest one back, as does a worker failure within
``run.max_failures``. In-process runs (``run.use_ray: false``) keep the same folders under
``<storage_path>/<name>/checkpoints/``. Where the files go is the session's part
(``trainers/session.py``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trainers.session import Session
from trainers.weights import EMA

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
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
    """Put back an ``rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


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


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (with model.pt), or the newest ``step_*`` under a run folder."""
    p = Path(path).expanduser()
    if (p / "model.pt").is_file():
        return p
    steps = sorted(q.parent for q in p.glob("**/step_*[0-9]/model.pt"))
    if not steps:
        raise FileNotFoundError(f"no checkpoint (step_*/model.pt) under {p}")
    return max(steps, key=lambda q: q.name)
