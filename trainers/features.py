"""A feature store: per-clip model inputs computed once (``cnas features paha``) instead of on every
training step — the frozen VAE's frame latents and the frozen audio backbone's per-frame features.

    store/
      features.json   {"meta": {...what computed them...}, "clips": {key: {file, sha256, mp4_sha256, wav_sha256, frames}}}
      <key>.npz       latents (T, C, h, w) float16, audio (T, A) float16: one row per frame of the clip

``meta`` names the latent (``vae:<digest>`` of the VAE folder's files, or ``pixel:<factor>``), the
audio front end (``spectrogram:<fps>`` or ``speech:<digest>:<layer>``) and the square image size:
a trainer whose config computes other features refuses the store (``check_meta``). Each entry keeps
the SHA-256 of the shard members it was computed from, and of its own file: the loader recomputes
both and refuses a stale or altered entry, naming the clip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "features.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_digest(path: str | Path) -> str:
    """16 hex digits over the names and bytes of a model folder's files (or of one file)."""
    p = Path(path).expanduser()
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
        if f.is_file():
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


class FeatureStore:
    """Read side of a store folder (``features.json`` + one npz per clip)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        index = self.root / INDEX
        if not index.is_file():
            raise FileNotFoundError(f"no feature store at {self.root} ({INDEX} missing; make one with cnas features paha)")
        data = json.loads(index.read_text())
        self.meta: dict[str, Any] = data["meta"]
        self.clips: dict[str, dict[str, Any]] = data["clips"]
        # the last clips read, checked once: a reference from another clip reads that clip's file again
        self._recent: dict[str, dict[str, np.ndarray]] = {}

    def check_meta(self, expected: dict[str, Any]) -> None:
        """ValueError when the store was computed by other models or at another size than ``expected``."""
        diff = {k: (self.meta.get(k), v) for k, v in expected.items() if self.meta.get(k) != v}
        if diff:
            raise ValueError(f"the feature store {self.root} was computed with other settings than this run's: "
                             + ", ".join(f"{k} is {a!r} there, {b!r} here" for k, (a, b) in diff.items())
                             + " (run cnas features paha again with this config, or unset data.features)")

    def load(self, key: str, sample: dict[str, Any]) -> dict[str, np.ndarray]:
        """The clip's arrays, after checking that the entry was computed from this sample's members
        and that its file is the one written; ValueError naming the clip otherwise."""
        entry = self.clips.get(key)
        if entry is None:
            raise ValueError(f"clip {key!r} is not in the feature store {self.root}: run cnas features paha over these "
                             "shards, or unset data.features")
        for member in ("mp4", "wav"):
            if member in sample and sha256_bytes(sample[member]) != entry[f"{member}_sha256"]:
                raise ValueError(f"clip {key!r}: its {member} is not the one the feature store {self.root} was computed "
                                 "from (the shards changed): run cnas features paha again")
        if key in self._recent:
            return self._recent[key]
        path = self.root / entry["file"]
        if path.resolve().parent != self.root:
            raise ValueError(f"feature store entry {key!r} names a file outside the store: {entry['file']!r}")
        data = path.read_bytes()
        if sha256_bytes(data) != entry["sha256"]:
            raise ValueError(f"feature store file {path} does not match its checksum in {INDEX}")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        self._recent[key] = arrays
        while len(self._recent) > 8:
            self._recent.pop(next(iter(self._recent)))
        return arrays


class FeatureWriter:
    """Write side: ``add`` one clip's arrays (atomically), ``close`` writes the index (entries of an
    existing store with the same meta are kept, so a store grows over several calls)."""

    def __init__(self, root: str | Path, meta: dict[str, Any]):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta, self.clips = meta, {}
        if (self.root / INDEX).is_file():
            old = json.loads((self.root / INDEX).read_text())
            if old["meta"] == meta:
                self.clips = old["clips"]

    def has(self, key: str, mp4: bytes, wav: bytes) -> bool:
        e = self.clips.get(key)
        return bool(e) and e["mp4_sha256"] == sha256_bytes(mp4) and e["wav_sha256"] == sha256_bytes(wav) \
            and (self.root / e["file"]).is_file()

    def add(self, key: str, mp4: bytes, wav: bytes, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        name = hashlib.sha256(key.encode()).hexdigest()[:24] + ".npz"  # keys come from shards: never a path
        _atomic_write(self.root / name, data)
        frames = len(next(iter(arrays.values())))
        self.clips[key] = {"file": name, "sha256": sha256_bytes(data), "mp4_sha256": sha256_bytes(mp4),
                           "wav_sha256": sha256_bytes(wav), "frames": frames}

    def close(self) -> Path:
        _atomic_write(self.root / INDEX, json.dumps({"meta": self.meta, "clips": dict(sorted(self.clips.items()))},
                                                    indent=1).encode())
        return self.root / INDEX


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
