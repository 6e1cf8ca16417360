"""One writer per output folder: ``OUT/.cnas.lock``, held with ``flock`` for the whole run.

Two ``cnas ingest`` (or ``rebuild``) runs into the same folder would interleave ledger entries,
shards and the identity registry; the second one now stops at once with the first one's pid and
start time. ``flock`` is released by the kernel when the holder dies, so a killed run never leaves
a stale lock behind (the file itself stays; it is only a place to hold the lock on).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from typing import Iterator

LOCK_FILE = ".cnas.lock"
_HELD: dict[str, int] = {}  # folder -> nesting depth, for the locks this process holds


class OutputLocked(ValueError):
    """Another run holds the output folder. (A ``ValueError`` so the CLI prints it as one line.)"""


@contextlib.contextmanager
def output_lock(folder: str, command: str = "cnas") -> Iterator[str]:
    """Hold the lock of the local ``folder`` (created if needed) while the block runs.

    Raises ``OutputLocked`` naming the holder when another process has it; the holder may nest it
    (the CLI takes it before routing logs into the folder, then ``run_ingest`` takes it again).
    Remote (fsspec) output folders have no ``flock``; callers skip the lock there.
    """
    os.makedirs(folder, exist_ok=True)
    folder = os.path.realpath(folder)
    path = os.path.join(folder, LOCK_FILE)
    if _HELD.get(folder):
        _HELD[folder] += 1
        try:
            yield path
        finally:
            _HELD[folder] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise OutputLocked(f"{folder} is in use by another run ({holder}); wait for it to finish or use another output folder") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _HELD[folder] = 1
        try:
            yield path
        finally:
            _HELD.pop(folder, None)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"{info.get('command', 'cnas')}, pid {info.get('pid')} on {info.get('host')}, started {info.get('started_at')}"
    except (OSError, ValueError):
        return "holder unknown"
