"""Reading untrusted releases and shards safely, and the file helpers every release step shares:
safe paths, regular files only, capped reads, tar samples, sha256 (docs/security.md)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import Iterator


# ---------------------------------------------------------------------------------------------
# a release's file names (docs/release.md): the one place that spells them

#: Checksums of every file, the stats, the dataset card, and per split its manifest.
SUMS, STATS, CARD, SPLIT_MANIFEST = "SHA256SUMS", "stats.json", "README.md", "manifest.jsonl"
#: The Croissant (JSON-LD) metadata of the release.
CROISSANT = "croissant.json"
#: ``<split>.index.json``: a split's wids shard index (full releases only).
INDEX_SUFFIX = ".index.json"
#: Folders: JSON schemas of the records, the card's plots, a metadata-only split's array tars.
SCHEMAS_DIR, PLOTS_DIR, ARRAYS_DIR = "schemas", "plots", "arrays"
#: A metadata-only release's recipe, per-split clip sources and the array members it may ship.
RECIPE, CLIPS_JSONL, ARRAY_MEMBERS = "rebuild.json", "clips.jsonl", ("pose.npz", "flame.npz")

# ---------------------------------------------------------------------------------------------
# reading untrusted releases and shards (docs/release.md, "Untrusted releases")

#: Largest tar member the shard readers accept (validate, rebuild, inspect); a sample may hold at most
#: twice this. Also the largest metadata file (json, jsonl, SHA256SUMS) read whole from a release.
MAX_MEMBER_BYTES = 512 * 2**20
#: Most members one sample may have.
MAX_SAMPLE_MEMBERS = 16
#: ffprobe's time limit per mp4 member in ``cnas validate``.
PROBE_TIMEOUT_S = 60.0

#: ``<key>.<suffix>``: a WebDataset member name with a safe key (no dot) and suffix, no folder.
_MEMBER_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,127})\.([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")


class UnsafeReleaseError(ValueError):
    """A release (or a file in it) that would make a reader leave its folder, follow a link, open a
    device or read without bound; refused before anything is written."""


class UnsafeTarError(tarfile.TarError, ValueError):
    """A tar member the shard readers refuse (before reading it): not a regular file, a name that is
    not ``<key>.<suffix>``, sparse, or larger than the cap. A ValueError too: ``cnas inspect`` reports it."""


def safe_join(root, *parts: str) -> Path:
    """``root/part/...``, refused (``UnsafeReleaseError``) when a part is empty, absolute or has a
    ``..`` component, or when the path, with every symlink resolved, is not inside ``root``."""
    for part in parts:
        if not isinstance(part, str) or not part or "\0" in part or "\\" in part or os.path.isabs(part) \
                or any(c == ".." for c in part.split("/")):
            raise UnsafeReleaseError(f"{part!r}: not a relative path inside the folder (absolute, empty or with '..')")
    base = Path(root).resolve()
    path = Path(root).joinpath(*parts)
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeReleaseError(f"{'/'.join(parts)}: leaves {root} (resolves to {resolved})")
    return path


def _kind(mode: int) -> str:
    return ("symbolic link" if stat.S_ISLNK(mode) else "character device" if stat.S_ISCHR(mode) else "block device"
            if stat.S_ISBLK(mode) else "fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "special file")


def check_regular(path: Path, name: str | None = None) -> None:
    """Raise ``UnsafeReleaseError`` unless ``path`` itself (not a link's target) is a regular file with one name."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name or path}: missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeReleaseError(f"{name or path}: a {_kind(st.st_mode)}, not a regular file")
    if st.st_nlink > 1:
        raise UnsafeReleaseError(f"{name or path}: a hard link ({st.st_nlink} names), not a file of its own")


def unsafe_entries(root: Path) -> list[str]:
    """Every entry under ``root`` that a release must not hold: symbolic links (in-tree ones too),
    hard links, devices, fifos, sockets — as messages, relative to ``root``."""
    errs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: errs.append(f"{e.filename}: unreadable ({e.strerror})")):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISLNK(st.st_mode):
                errs.append(f"{rel}: a symbolic link (-> {os.readlink(p)}); a release holds regular files only")
            elif not stat.S_ISREG(st.st_mode):
                errs.append(f"{rel}: a {_kind(st.st_mode)}; a release holds regular files only")
            elif st.st_nlink > 1:
                errs.append(f"{rel}: a hard link ({st.st_nlink} names); a release holds regular files only")
    return errs


def read_capped(path: Path, max_bytes: int = MAX_MEMBER_BYTES, name: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (refused before reading otherwise)."""
    check_regular(path, name)
    size = os.lstat(path).st_size
    if size > max_bytes:
        raise UnsafeReleaseError(f"{name or path}: {size} bytes, over the {max_bytes}-byte cap")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)[:max_bytes]


def _check_member(m: tarfile.TarInfo, max_member_bytes: int) -> tuple[str, str]:
    if not m.isreg():
        kind = "directory" if m.isdir() else "symbolic link" if m.issym() else "hard link" if m.islnk() else \
            "device" if m.ischr() or m.isblk() else "fifo" if m.isfifo() else f"type {m.type!r}"
        raise UnsafeTarError(f"{m.name}: a {kind} member; shards hold regular files only")
    if m.type == tarfile.GNUTYPE_SPARSE or m.issparse() or any(k.startswith("GNU.sparse") for k in m.pax_headers):
        raise UnsafeTarError(f"{m.name}: a sparse member ({m.size} bytes expanded); refused")
    if m.size > max_member_bytes:
        raise UnsafeTarError(f"{m.name}: {m.size} bytes, over the {max_member_bytes}-byte member cap")
    match = _MEMBER_NAME.match(m.name)
    if not match or ".." in m.name:
        raise UnsafeTarError(f"{m.name!r}: not a member name <key>.<suffix> (letters, digits, '_', '-'; no folder, no '..')")
    return match.group(1), match.group(2)


def iter_tar_samples(path: str, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) of a WebDataset tar in file order; raises on a truncated/corrupt tar.
    Refuses (``UnsafeTarError``, before reading the member) anything but a regular file named
    ``<key>.<suffix>``: links, devices, folders, sparse members, a member over ``max_member_bytes``,
    a sample over twice that or with more than ``MAX_SAMPLE_MEMBERS`` members or a repeated one."""
    current, members, total = None, {}, 0
    with tarfile.open(path, mode="r|") as tar:  # stream mode: reads every block, so truncation surfaces
        for m in tar:
            key, suffix = _check_member(m, max_member_bytes)
            if key != current and current is not None:
                yield current, members
                members, total = {}, 0
            current = key
            if suffix in members:
                raise UnsafeTarError(f"{m.name}: a second {suffix} member of sample {key}")
            total += m.size
            if len(members) >= MAX_SAMPLE_MEMBERS or total > 2 * max_member_bytes:
                raise UnsafeTarError(f"{m.name}: sample {key} has over {MAX_SAMPLE_MEMBERS} members or {2 * max_member_bytes} bytes")
            data = tar.extractfile(m).read()
            if len(data) != m.size:
                raise tarfile.ReadError(f"{m.name}: {len(data)} of {m.size} bytes")
            members[suffix] = data
    if current is not None:
        yield current, members



def sha256_file(path: str) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

