"""The one exception type stages raise for bad input (it carries a machine-readable reason).
Atomic file writes are in ``stages/files.py``."""

from __future__ import annotations


class StageError(Exception):
    """A video cannot go through a stage. ``reason`` is a short snake_case code counted in the stats."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
