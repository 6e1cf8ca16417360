"""The work directory: a local path or an fsspec URI, with atomic writes and contained paths.

Stages work on local files (ffmpeg needs them). On a local work dir they write in place; on a
remote one (``s3://``, ``gs://``, …) ``local_dir`` hands them a scratch folder whose contents are
uploaded when the block exits, and ``fetch`` brings an input down to a scratch copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from stages.files import write_bytes

_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class UnsafePathError(ValueError):
    """A path component derived from input would leave the work directory."""


class WorkDir:
    """Paths under one root; every relative path is checked to stay under it."""

    def __init__(self, uri: str, create: bool = True):
        self.uri = uri
        self.fs, root = fsspec.core.url_to_fs(uri)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self.is_local else root.rstrip("/")
        if self.is_local and create:
            os.makedirs(self.root, exist_ok=True)

    def rel(self, *parts: str) -> str:
        """Join components into a relative path; refuse '..', absolute parts, empty parts, odd characters."""
        for part in parts:
            for piece in str(part).split("/"):
                if not _SAFE_PART.match(piece) or piece in (".", ".."):
                    raise UnsafePathError(f"unsafe path component {piece!r} in {'/'.join(map(str, parts))!r}")
        return "/".join(str(p) for p in parts)

    def path(self, *parts: str) -> str:
        """Full path (local path or URI) of ``parts`` under the root."""
        rel = self.rel(*parts)
        if self.is_local:
            full = os.path.abspath(os.path.join(self.root, rel))
            if os.path.commonpath([full, self.root]) != self.root:  # belt and braces
                raise UnsafePathError(f"{rel!r} escapes {self.root}")
            return full
        return f"{self.root}/{rel}"

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        with self.fs.open(self.path(*parts), "r", encoding="utf-8") as f:
            return f.read()

    def write_text(self, text: str, *parts: str) -> None:
        """Write atomically: readers see the old content or the new one, never a torn file."""
        full = self.path(*parts)
        if self.is_local:
            write_bytes(full, text.encode("utf-8"), durable=True)  # the rename survives a power cut too
        else:  # object stores replace whole objects atomically
            self.fs.pipe_file(full, text.encode("utf-8"))

    def remove(self, *parts: str) -> None:
        full = self.path(*parts)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    def listdir(self, *parts: str) -> list[str]:
        full = self.path(*parts) if parts else self.root
        if not self.fs.exists(full):
            return []
        return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(full, detail=False))

    @contextlib.contextmanager
    def local_dir(self, *parts: str) -> Iterator[str]:
        """A local folder for ``parts``: the real one on a local work dir, else a scratch folder uploaded on exit."""
        if self.is_local:
            full = self.path(*parts)
            os.makedirs(full, exist_ok=True)
            yield full
            return
        scratch = tempfile.mkdtemp(prefix="cnas-")
        try:
            yield scratch
            self.fs.put(scratch.rstrip("/") + "/", self.path(*parts), recursive=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @contextlib.contextmanager
    def fetch(self, path: str) -> Iterator[str]:
        """A local copy of ``path`` (a path under this work dir or an absolute local path)."""
        if self.is_local or os.path.isabs(path) and os.path.exists(path):
            yield path
            return
        scratch = tempfile.mkdtemp(prefix="cnas-")
        try:
            local = os.path.join(scratch, os.path.basename(path))
            self.fs.get(path, local)
            yield local
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
