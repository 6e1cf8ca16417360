"""Validation of a packaged release (``cnas validate``): checksums, indices, every sample's members.

    cnas validate RELEASE_DIR
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas import ClipRecord, ManifestRow
from schemas.release import check_safe_name

from pipeline.release.croissant import check_metadata
from pipeline.release.files import (
    ARRAYS_DIR, ARRAY_MEMBERS, CLIPS_JSONL, INDEX_SUFFIX, MAX_MEMBER_BYTES, PROBE_TIMEOUT_S, RECIPE, STATS, SUMS,
    UnsafeReleaseError, UnsafeTarError, check_regular, iter_tar_samples, read_capped, safe_join, sha256_file,
    unsafe_entries)


# ---------------------------------------------------------------------------------------------
# validation


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    samples: int = 0
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def _mp4_frames(data: bytes, timeout_s: float = PROBE_TIMEOUT_S) -> int:
    """Video packets of an MP4 member: ffprobe with the MP4 demuxer forced and only the ``file``
    protocol (a playlist or a reference to a URL is refused, never fetched), within ``timeout_s``.
    Raises ``ValueError`` for anything that is not a readable MP4 file."""
    if data[4:8] != b"ftyp":
        raise ValueError("not an MP4 file (no ftyp box at its start)")
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        try:
            out = subprocess.run(["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-f", "mp4", "-select_streams", "v:0",
                                  "-count_packets", "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", "-i", f.name],
                                 capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ValueError(f"ffprobe did not finish within {timeout_s:g} s") from None
    text = out.stdout.strip()
    if out.returncode != 0 or not text.isdigit():
        raise ValueError(f"ffprobe cannot read it ({(out.stderr.strip().splitlines() or ['no video stream'])[-1]})")
    return int(text)


def _npz_frames(data: bytes, name: str, max_bytes: int = MAX_MEMBER_BYTES) -> int:
    """Length (first dimension) of array ``name`` of an npz member, from its header: no pickle, an
    object array refused, and nothing decompressed beyond the header."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        try:
            info = zf.getinfo(f"{name}.npy")
        except KeyError:
            raise ValueError(f"no array {name!r}") from None
        if info.file_size > max_bytes:
            raise ValueError(f"array {name!r}: {info.file_size} bytes uncompressed, over the {max_bytes}-byte cap")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError(f"array {name!r} holds Python objects (pickle); refused")
    if not shape:
        raise ValueError(f"array {name!r} is a scalar")
    return int(shape[0])


def _read(root: Path, rel: str, rep: ValidationReport, max_bytes: int, missing: str | None = "missing") -> bytes | None:
    """The bytes of ``root/rel`` (a regular file inside the release, under the cap), else None and an
    error (``missing=None``: a missing file is no error)."""
    try:
        return read_capped(safe_join(root, *rel.split("/")), max_bytes, rel)
    except FileNotFoundError:
        if missing:
            rep.errors.append(f"{rel}: {missing}")
    except (UnsafeReleaseError, OSError) as e:
        rep.errors.append(f"{rel}: refused: {e}")
    return None


def _read_json(root: Path, rel: str, rep: ValidationReport, max_bytes: int, missing: str | None = "missing"):
    data = _read(root, rel, rep, max_bytes, missing)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        rep.errors.append(f"{rel}: does not parse ({e})")
        return None


def _check_sums(root: Path, rep: ValidationReport, max_bytes: int) -> None:
    """Every line of ``SHA256SUMS``: a relative path to a regular file inside the release (absolute
    paths, ``..``, links and devices are refused, not read) whose sha256 matches."""
    if not os.path.lexists(root / SUMS):
        rep.errors.append(f"{SUMS} is missing")
        return
    data = _read(root, SUMS, rep, max_bytes)
    if data is None:
        return
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest):
            rep.errors.append(f"{SUMS}:{n}: not a line '<sha256>  <path>'")
            continue
        try:
            path = safe_join(root, name)
            check_regular(path, name)
        except FileNotFoundError:
            rep.errors.append(f"{name}: listed in {SUMS} but missing")
            continue
        except (UnsafeReleaseError, OSError) as e:
            rep.errors.append(f"{SUMS}:{n}: {name!r} refused, not read: {e}")
            continue
        if sha256_file(str(path)) != digest:
            rep.errors.append(f"{name}: sha256 differs from {SUMS} (corrupted or modified)")


def validate_release(folder: str, check_media: bool = True, max_member_bytes: int = MAX_MEMBER_BYTES,
                     probe_timeout_s: float = PROBE_TIMEOUT_S) -> ValidationReport:
    """Check a release: checksums, every shard readable, same members per sample, json valid,
    arrays and media lengths equal the frame/sample counts, member hashes, disjoint speakers.
    The release is untrusted: links, devices, paths that leave the folder, sparse or oversized tar
    members are reported and never followed or read; a bad sample is an error, never a crash."""
    import soundfile as sf

    root, rep = Path(folder), ValidationReport()
    if not root.is_dir():
        rep.errors.append(f"{folder}: not a folder")
        return rep
    rep.errors += unsafe_entries(root)
    _check_sums(root, rep, max_member_bytes)
    stats = _read_json(root, STATS, rep, max_member_bytes, missing=None)
    stats = stats if isinstance(stats, dict) else {}
    metadata_only = (root / RECIPE).exists() and not any(root.glob(f"*{INDEX_SUFFIX}"))
    seen_speakers: dict[str, str] = {}
    splits = stats.get("splits", {})
    for split, info in (splits.items() if isinstance(splits, dict) else []):
        speakers = info.get("speakers") if isinstance(info, dict) else None
        if not isinstance(speakers, list):
            rep.errors.append(f"stats.json: split {split!r} has no speaker list")
            continue
        for spk in map(str, speakers):
            if spk in seen_speakers:
                rep.errors.append(f"speaker {spk!r} is in both {seen_speakers[spk]} and {split}")
            seen_speakers[spk] = split
    for index_path in sorted(root.glob(f"*{INDEX_SUFFIX}")):
        _validate_split(root, index_path.name, rep, check_media, sf, max_member_bytes, probe_timeout_s)
    try:
        rep.errors += check_metadata(root)
    except (UnsafeReleaseError, OSError) as e:
        rep.errors.append(f"standard metadata: refused: {e}")
    if metadata_only:
        validate_metadata_release(root, rep, max_member_bytes)
    elif rep.shards == 0:
        rep.errors.append("no shard index (*.index.json) found")
    return rep


def _validate_split(root: Path, index_name: str, rep: ValidationReport, check_media: bool, sf, max_bytes: int,
                    probe_timeout_s: float) -> None:
    from pydantic import ValidationError

    split = index_name[: -len(INDEX_SUFFIX)]
    try:
        check_safe_name(split, "split")
    except ValueError as e:
        rep.errors.append(f"{index_name}: {e}")
        return
    index = _read_json(root, index_name, rep, max_bytes)
    if not isinstance(index, dict) or not isinstance(index.get("shardlist"), list):
        if index is not None:
            rep.errors.append(f"{index_name}: not a wids shard index (no shardlist)")
        return
    manifest = {}
    for n, line in enumerate((_read(root, f"{split}/manifest.jsonl", rep, max_bytes, missing=None) or b"").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = ManifestRow.model_validate_json(line)
            manifest[row.key] = row
        except ValidationError as e:
            rep.errors.append(f"{split}/manifest.jsonl:{n}: does not validate: {e.errors()[0]['msg']}")
    member_set = None
    for entry in index["shardlist"]:
        rep.shards += 1
        url = entry.get("url") if isinstance(entry, dict) else None
        parts = url.split("/") if isinstance(url, str) else []
        if len(parts) != 2 or parts[0] != split:
            rep.errors.append(f"{index_name}: shard url {url!r} is not {split}/<shard>.tar")
            continue
        try:
            check_safe_name(parts[1], "shard")
            path = safe_join(root, split, parts[1])
            check_regular(path, url)
        except FileNotFoundError:
            rep.errors.append(f"{url}: missing")
            continue
        except (UnsafeReleaseError, ValueError, OSError) as e:
            rep.errors.append(f"{url}: refused, not read: {e}")
            continue
        if path.stat().st_size != entry.get("filesize"):
            rep.errors.append(f"{url}: {path.stat().st_size} bytes, index says {entry.get('filesize')}")
        n = 0
        try:
            for key, members in iter_tar_samples(str(path), max_bytes):
                n += 1
                rep.samples += 1
                where = f"{url}:{key}"
                if member_set is None:
                    member_set = set(members)
                elif set(members) != member_set:
                    rep.errors.append(f"{where}: members {sorted(members)} differ from {sorted(member_set)}")
                try:
                    rep.errors += _check_one(where, split, members, manifest.get(key), check_media, sf, probe_timeout_s, max_bytes)
                except Exception as e:  # noqa: BLE001 -- a crafted sample is a reported error, never a crash
                    rep.errors.append(f"{where}: could not be checked ({type(e).__name__}: {e})")
        except UnsafeTarError as e:
            rep.errors.append(f"{url}: refused: {e}")
            continue
        except (tarfile.TarError, OSError, EOFError) as e:
            rep.errors.append(f"{url}: unreadable or truncated tar ({type(e).__name__}: {e})")
            continue
        if n != entry.get("nsamples"):
            rep.errors.append(f"{url}: {n} samples, index says {entry.get('nsamples')}")


def _check_one(where: str, split: str, members: dict[str, bytes], row, check_media: bool, sf, probe_timeout_s: float,
               max_bytes: int) -> list[str]:
    from pydantic import ValidationError

    errs = []
    if row is not None:
        for suffix, data in members.items():
            if hashlib.sha256(data).hexdigest() != row.member_sha256.get(suffix):
                errs.append(f"{where}.{suffix}: sha256 differs from {split}/manifest.jsonl (tampered)")
    try:
        clip = ClipRecord.model_validate_json(members.get("json", b"{}"))
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(map(str, first["loc"])) or "record"
        return errs + [f"{where}.json: does not validate ({loc}): {first['msg']}"]
    return errs + [f"{where}: {m}" for m in _check_sample(clip, members, check_media, sf, probe_timeout_s, max_bytes)]


def _check_sample(clip: ClipRecord, members: dict[str, bytes], check_media: bool, sf, probe_timeout_s: float = PROBE_TIMEOUT_S,
                  max_bytes: int = MAX_MEMBER_BYTES) -> list[str]:
    errs = []
    if set(clip.members) != set(members):
        errs.append(f"json lists members {clip.members}, the sample has {sorted(members)}")
    if "wav" in members:
        try:
            info = sf.info(io.BytesIO(members["wav"]))
        except Exception as e:  # noqa: BLE001 -- libsndfile's errors (RuntimeError, LibsndfileError, TypeError)
            errs.append(f"wav: unreadable ({type(e).__name__}: {e})")
        else:
            if info.frames != clip.num_audio_samples or info.samplerate != clip.sample_rate_hz:
                errs.append(f"wav has {info.frames} samples at {info.samplerate} Hz, json says {clip.num_audio_samples} at {clip.sample_rate_hz}")
    if abs(clip.num_frames / clip.fps - clip.num_audio_samples / clip.sample_rate_hz) > 1 / clip.fps + 1e-6:
        errs.append("audio and video durations disagree")
    if check_media and "mp4" in members:
        try:
            frames = _mp4_frames(members["mp4"], probe_timeout_s)
        except ValueError as e:
            errs.append(f"mp4: {e}")
        else:
            if frames != clip.num_frames:
                errs.append(f"mp4 has {frames} frames, json says {clip.num_frames}")
    for member, key in (("pose.npz", "part_confidences"), ("flame.npz", "exp")):
        if member in members:
            try:
                frames = _npz_frames(members[member], key, max_bytes)
            except Exception as e:  # noqa: BLE001 -- zipfile / numpy header errors of a crafted member
                errs.append(f"{member}: unreadable ({type(e).__name__}: {e})")
                continue
            if frames != clip.num_frames:
                errs.append(f"{member}:{key} has {frames} frames, json says {clip.num_frames}")
    return errs




def validate_metadata_release(root: Path, rep: "ValidationReport", max_bytes: int = MAX_MEMBER_BYTES) -> None:
    """Checks of a metadata-only release beyond ``SHA256SUMS``: ``rebuild.json`` and every clips.jsonl
    line validate (split names are safe path components), keys are unique, and the arrays tars
    read (capped, no link/sparse member) with members that match the clips' checksums."""
    from pydantic import ValidationError

    from schemas.release import ClipSource, RebuildRecipe

    data = _read(root, RECIPE, rep, max_bytes)
    if data is None:
        return
    try:
        recipe = RebuildRecipe.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        rep.errors.append(f"{RECIPE}: does not validate ({'.'.join(map(str, first['loc']))}): {first['msg']}")
        return
    seen: dict[str, str] = {}
    for split in recipe.splits:
        raw = _read(root, f"{split}/{CLIPS_JSONL}", rep, max_bytes)
        if raw is None:
            continue
        clips: dict[str, ClipSource] = {}
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                c = ClipSource.model_validate_json(line)
            except ValidationError as e:
                first = e.errors()[0]
                rep.errors.append(f"{split}/{CLIPS_JSONL}:{n}: does not validate ({'.'.join(map(str, first['loc']))}): {first['msg']}")
                continue
            rep.samples += 1
            if c.split != split:
                rep.errors.append(f"{split}/{CLIPS_JSONL}:{n}: {c.key} says split {c.split!r}")
            if c.key in seen:
                rep.errors.append(f"{split}/{CLIPS_JSONL}:{n}: {c.key} is also in {seen[c.key]}")
            seen[c.key] = split
            clips[c.key] = c
        try:
            arrays = safe_join(root, split, ARRAYS_DIR)
        except UnsafeReleaseError as e:
            rep.errors.append(f"{split}/arrays: refused: {e}")
            continue
        for tar in sorted(arrays.glob("*.tar")) if arrays.is_dir() and not arrays.is_symlink() else []:
            rel = f"{split}/arrays/{tar.name}"
            try:
                check_regular(tar, rel)
                for key, members in iter_tar_samples(str(tar), max_bytes):
                    c = clips.get(key)
                    if c is None:
                        rep.errors.append(f"{rel}:{key}: not a clip of {split}/{CLIPS_JSONL}")
                        continue
                    for suffix, blob in members.items():
                        if suffix not in ARRAY_MEMBERS:
                            rep.errors.append(f"{rel}:{key}.{suffix}: not an array member ({', '.join(ARRAY_MEMBERS)})")
                        elif hashlib.sha256(blob).hexdigest() != c.member_sha256.get(suffix):
                            rep.errors.append(f"{rel}:{key}.{suffix}: sha256 differs from {split}/{CLIPS_JSONL} (tampered)")
            except UnsafeTarError as e:
                rep.errors.append(f"{rel}: refused: {e}")
            except (UnsafeReleaseError, tarfile.TarError, OSError, EOFError) as e:
                rep.errors.append(f"{rel}: unreadable ({type(e).__name__}: {e})")
