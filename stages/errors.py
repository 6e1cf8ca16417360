"""The one exception type stages raise for bad input (it carries a machine-readable reason), and atomic file writes."""

from __future__ import annotations


class StageError(Exception):
    """A video cannot go through a stage. ``reason`` is a short snake_case code counted in the stats."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def temp_name(path: str, suffix: str) -> str:
    """A per-process temporary name next to ``path``: two writers of the same output (a re-run racing
    a straggler of a killed run) never interleave bytes in one file; ``os.replace`` picks a whole one."""
    import os
    import uuid

    return f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part{suffix}"


def write_npz(path: str, arrays: dict) -> None:
    """``np.savez_compressed`` to a temporary name, then moved into place (never a half-written file)."""
    import os

    import numpy as np

    tmp = temp_name(path, ".npz")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
