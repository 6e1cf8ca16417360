"""Atomic file writes: the one way the stages, the engine and the release steps put a file in place.

A file is written under a per-process temporary name next to its target and moved over it with
``os.replace`` (rename(2)): a reader, a crash or a second writer of the same output (a re-run racing a
straggler of a killed run) sees the old file or the whole new one, never a torn or interleaved one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator


def temp_name(path: str, suffix: str = "") -> str:
    """A per-process temporary name next to ``path`` (``suffix`` keeps tools that go by the extension happy)."""
    return f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part{suffix}"


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", durable: bool = False) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to; moved into place when the block ends
    without error, removed otherwise. ``durable``: fsync the file and its folder, so the new content
    survives a power cut once the block has returned."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_bytes(path: str, data: bytes, durable: bool = False) -> None:
    """Put ``data`` at ``path`` atomically."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_npz(path: str, arrays: dict) -> None:
    """``np.savez_compressed`` of ``arrays`` at ``path``, atomically."""
    import numpy as np

    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
