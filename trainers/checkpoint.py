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

import copy
import logging
import random
import time
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
    workers of a node see every GPU; touching the others would open contexts on them).

    Every state is tensors and plain values, so a checkpoint loads with ``torch.load(weights_only=True)``:
    Python's Mersenne Twister as its 624 words plus the position (int64), NumPy's legacy state
    the same way."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back an ``rng_state`` (also the pickled tuples of checkpoints written before it held tensors)."""
    py = state["python"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"])
    random.setstate(py)
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["bit_generator"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", legacy_rng: bool = False) -> Any:
    """``torch.load`` of a checkpoint file with ``weights_only=True``: tensors and plain containers of
    str/int/float/bool/None only, so a file from elsewhere cannot run code when it is loaded. A file
    holding other pickled objects is a ValueError naming it. ``legacy_rng``: also accept the NumPy
    arrays of RNG states that ``rank_<r>.pt`` files held before they were tensors (NumPy's array
    reconstruction only; any other object is still refused)."""
    import pickle

    try:
        if legacy_rng:
            with torch.serialization.safe_globals(_numpy_array_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0].split(". Please", 1)[0][:300]
        raise ValueError(f"{path}: refused to load: the checkpoint holds pickled Python objects beyond tensors and "
                         f"plain containers ({detail}); checkpoints are loaded with weights_only=True so that a "
                         "file cannot run code") from None


def _numpy_array_globals() -> list[Any]:
    """What pickling a plain NumPy array names: its reconstruction function, ndarray and dtypes."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def restore_checkpoint(session: Session, targets: dict[str, Any]) -> tuple[int, dict[str, int], dict[str, Any] | None]:
    """Load the newest checkpoint into ``targets`` (name → optimiser, ``EMA``, or (module, loader)
    pair) and this worker's RNG states. Returns (step, data position, the rank-0 payload or None)."""
    tic = time.perf_counter()
    ckpt = session.latest_checkpoint()
    if ckpt is None:
        return 0, {"epoch": 0, "batches": 0}, None
    state = load_checkpoint_file(ckpt / "model.pt", map_location=session.device)
    for name, target in targets.items():
        if isinstance(target, EMA):
            target.shadow = {k: v.to(session.device) for k, v in state[name].items()}
        elif isinstance(target, tuple):
            target[1](target[0], state[name])
        else:
            target.load_state_dict(state[name])
    mine = ckpt / f"rank_{session.rank}.pt"
    if mine.exists() and state.get("world_size") == session.world_size:
        rank_state = load_checkpoint_file(mine, legacy_rng=True)
        position = rank_state["position"]
        set_rng_state(rank_state["rng"], session.device)
    else:  # another number of workers: the data split changed, start the next epoch afresh
        position = {"epoch": state.get("epoch", 0) + 1, "batches": 0}
    session.restore_s = time.perf_counter() - tic
    if session.rank == 0:
        log.warning("resumed from %s at step %d (%.1f s to fetch and load)", ckpt.name, state["step"], session.restore_s)
    return state["step"], position, state


def save_checkpoint(session: Session, step: int, position: dict[str, Any], metrics: dict[str, float],
                    payload: Callable[[], dict[str, Any]]) -> float:
    """Checkpoint ``step``: every worker writes its data position and RNG states, rank 0 also
    ``payload()`` (weights, optimisers, …) with the step, world size and epoch. Returns the seconds
    the step was held (with asynchronous uploads: the local write only)."""
    tic = time.perf_counter()
    files: dict[str, Any] = {f"rank_{session.rank}.pt": {"position": copy.deepcopy(position), "rng": rng_state(session.device)}}
    if session.rank == 0:
        files["model.pt"] = {"step": step, "world_size": session.world_size, "epoch": position["epoch"], **payload()}
    session.save(step, files, metrics)
    return time.perf_counter() - tic


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (with model.pt), or the newest ``step_*`` under a run folder."""
    p = Path(path).expanduser()
    if (p / "model.pt").is_file():
        return p
    steps = sorted(q.parent for q in p.glob("**/step_*[0-9]/model.pt"))
    if not steps:
        raise FileNotFoundError(f"no checkpoint (step_*/model.pt) under {p}")
    return max(steps, key=lambda q: q.name)
