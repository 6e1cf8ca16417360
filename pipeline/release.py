"""Release packaging: speaker-disjoint splits, resharding, checksums, wids indices, stats, plots and
a dataset card — and validation of a packaged release.

    cnas release RUN_DIR --version 1.0 --out RELEASE_DIR
    cnas validate RELEASE_DIR
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import webdataset as wds

from schemas import SCHEMA_VERSION, ClipRecord, ManifestRow, export_json_schemas
from schemas.release import check_safe_name

from .config import ReleaseConfig
from .croissant import card_header, check_metadata, write_croissant

SUMS = "SHA256SUMS"

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


def speaker_of(clip: ClipRecord, keys: list[str], by_identity: bool = True) -> str:
    """The split key of a clip: its face identity (the same anchor in every episode), else the
    source metadata ``keys`` (e.g. ``speaker``), else the video id."""
    if by_identity and clip.identity:
        return clip.identity
    for k in keys:
        if clip.source_metadata.get(k):
            return str(clip.source_metadata[k])
    return clip.video_id


def split_key_used(clips: list[ClipRecord], cfg: ReleaseConfig) -> str:
    """Which key the splits were made disjoint on, for the card."""
    n = len(clips) or 1
    ident = sum(bool(cfg.split_by_identity and c.identity) for c in clips)
    meta = sum(bool(not (cfg.split_by_identity and c.identity) and any(c.source_metadata.get(k) for k in cfg.speaker_keys)) for c in clips)
    return (f"face identity for {ident / n:.0%} of the clips, source metadata `{'`/`'.join(cfg.speaker_keys)}` for "
            f"{meta / n:.0%}, the video id for the rest")


def assign_splits(speaker_seconds: dict[str, float], ratios: dict[str, float], seed: int) -> dict[str, str]:
    """Speaker → split, deterministic: speakers in a seeded hash order go, whole, to the split
    furthest below its target share of the hours. No speaker is in two splits."""
    order = sorted(speaker_seconds, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    total = sum(speaker_seconds.values()) or 1.0
    got = {name: 0.0 for name in ratios}
    out = {}
    for spk in order:
        # the split with the largest deficit (target minus current share); ties in ratio order
        name = max(ratios, key=lambda n: (ratios[n] - got[n] / total, ratios[n]))
        if ratios[name] <= 0:
            continue
        out[spk] = name
        got[name] += speaker_seconds[spk]
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _staging_for(out: Path, cfg: ReleaseConfig) -> Path:
    """Checks before packaging, and the staging folder: next to ``out`` (same file system, so that
    publishing is one rename)."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; releases are written once")
    for name in cfg.split_ratios:
        check_safe_name(name, "release.split_ratios: split")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=str(out.parent)))


def _publish(staging: Path, out: Path) -> None:
    """Write ``SHA256SUMS`` over every file of a finished release in ``staging``, then publish it as
    ``out`` with one rename (``out`` absent or an empty folder): a crash leaves no release or the whole one."""
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != SUMS)
    (staging / SUMS).write_text("".join(f"{_sha256(str(p))}  {p.relative_to(staging)}\n" for p in files))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private; a release folder is as mkdir would make it
    try:
        os.replace(staging, out)  # rename(2): atomic, also over an empty folder
    except OSError as e:
        raise ValueError(f"{out}: cannot publish the release there ({e.strerror}); releases are written once") from None


def package_release(run_dir: str, version: str, out_dir: str, cfg: ReleaseConfig) -> dict:
    """Build the release in ``out_dir`` from an ingest run's shards and manifest; returns the stats."""
    run, out = Path(run_dir), Path(out_dir)
    manifest = [ManifestRow.model_validate_json(l) for l in (run / "manifest.jsonl").read_text().splitlines() if l.strip()]
    if not manifest:
        raise ValueError(f"{run_dir}: the manifest lists no samples")
    staging = _staging_for(out, cfg)
    try:
        # pass 1: clip records (json members) -> speakers and their hours
        clips: dict[str, ClipRecord] = {}
        for shard in sorted({r.shard for r in manifest}):
            for key, members in iter_tar_samples(str(run / "shards" / shard)):
                clips[key] = ClipRecord.model_validate_json(members["json"])
        seconds: dict[str, float] = defaultdict(float)
        for c in clips.values():
            seconds[speaker_of(c, cfg.speaker_keys, cfg.split_by_identity)] += c.end_s - c.start_s
        split_of_speaker = assign_splits(seconds, cfg.split_ratios, cfg.seed)
        # pass 2: reshard per split, in key order
        writers, rows = {}, defaultdict(list)
        for name in cfg.split_ratios:
            (staging / name).mkdir(parents=True)
            writers[name] = wds.ShardWriter(str(staging / name / f"cnas-{name}-%06d.tar"), maxcount=cfg.max_shard_count,
                                            maxsize=int(cfg.target_shard_mb * 2**20), verbose=0, mtime=0)
        try:
            for shard in sorted({r.shard for r in manifest}):
                for key, members in iter_tar_samples(str(run / "shards" / shard)):
                    c = clips[key]
                    name = split_of_speaker[speaker_of(c, cfg.speaker_keys, cfg.split_by_identity)]
                    writers[name].write({"__key__": key, **members})
                    rows[name].append(ManifestRow(
                        key=key, shard=os.path.basename(writers[name].fname), video_id=c.video_id, duration_s=c.end_s - c.start_s,
                        member_bytes={k: len(v) for k, v in members.items()},
                        member_sha256={k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
                    ))
        finally:
            for w in writers.values():
                w.close()
        # indices, manifests, checksums
        for name in cfg.split_ratios:
            (staging / name / "manifest.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows[name]))
            counts = Counter(r.shard for r in rows[name])
            shardlist = [
                {"url": f"{name}/{s}", "nsamples": counts[s], "filesize": (staging / name / s).stat().st_size,
                 "sha256": _sha256(str(staging / name / s))}
                for s in sorted(counts)
            ]
            index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": f"{cfg.name}-{version}-{name}", "shardlist": shardlist}
            (staging / f"{name}.index.json").write_text(json.dumps(index, indent=2) + "\n")
        export_json_schemas(str(staging / "schemas"))
        ingest_stats = json.loads((run / "stats.json").read_text()) if (run / "stats.json").exists() else {}
        stats = release_stats(clips, split_of_speaker, rows, cfg, ingest_stats, version)
        (staging / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
        make_plots(clips, split_of_speaker, cfg, staging / "plots")
        (staging / "README.md").write_text(card_header(stats, cfg, version) + dataset_card(stats, cfg, version))
        write_croissant(staging, stats, cfg, version)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def release_stats(clips, split_of_speaker, rows, cfg: ReleaseConfig, ingest_stats: dict, version: str) -> dict:
    per_speaker = defaultdict(float)
    for c in clips.values():
        per_speaker[speaker_of(c, cfg.speaker_keys, cfg.split_by_identity)] += (c.end_s - c.start_s) / 3600
    durations = np.array([c.end_s - c.start_s for c in clips.values()])
    hist, edges = np.histogram(durations, bins=np.arange(0, max(12.0, durations.max() + 2), 2.0))
    parts: dict[str, list[float]] = defaultdict(list)
    for c in clips.values():
        for k, v in c.quality.items():
            if k.startswith("mean_") and k.endswith("_confidence"):
                parts[k[5:-11]].append(v)
    return {
        "name": cfg.name, "version": version, "schema_version": SCHEMA_VERSION, "licence": cfg.licence,
        "clips": len(clips), "hours": round(float(durations.sum()) / 3600, 4), "speakers": len(per_speaker),
        "splits": {n: {"clips": len(rows[n]), "hours": round(sum(r.duration_s for r in rows[n]) / 3600, 4),
                       "speakers": sorted({s for s, v in split_of_speaker.items() if v == n}),
                       "shards": len({r.shard for r in rows[n]})} for n in cfg.split_ratios},
        "per_speaker_hours": {k: round(v, 4) for k, v in sorted(per_speaker.items())},
        "split_key": split_key_used(list(clips.values()), cfg),
        "languages": languages_of(clips.values()),
        "identities": len({c.identity for c in clips.values() if c.identity}),
        "per_identity_hours": {k: round(sum((c.end_s - c.start_s) / 3600 for c in clips.values() if c.identity == k), 4)
                               for k in sorted({c.identity for c in clips.values() if c.identity})},
        "duration_histogram": {"bin_edges_s": edges.tolist(), "counts": hist.tolist()},
        "audio": {k: {"p10": round(float(np.percentile(v, 10)), 4), "p50": round(float(np.percentile(v, 50)), 4),
                      "p90": round(float(np.percentile(v, 90)), 4)}
                  for k in AUDIO_FIGURES if (v := [c.quality[k] for c in clips.values() if k in c.quality])},
        "part_confidence": {k: {"mean": round(float(np.mean(v)), 4), "p10": round(float(np.percentile(v, 10)), 4),
                                "p50": round(float(np.percentile(v, 50)), 4), "p90": round(float(np.percentile(v, 90)), 4)}
                            for k, v in sorted(parts.items())},
        "rejection_reasons": ingest_stats.get("rejects_by_reason", {}),
        "failure_reasons": ingest_stats.get("failures_by_reason", {}),
        "skipped_stages": ingest_stats.get("skipped_stages", {}),
    }


def languages_of(clips) -> dict[str, int]:
    """ISO 639-1 code -> clips: the clip's language, else its transcript's, else the source metadata's."""
    from .croissant import language_of

    out: Counter = Counter()
    for c in clips:
        tag = c.language or (c.transcript.language if c.transcript else None) or c.source_metadata.get("language")
        if (code := language_of(str(tag) if tag else None)):
            out[code] += 1
    return dict(sorted(out.items()))


#: Clip audio figures (stages/audio_quality.py) plotted in the card, with their axis labels.
AUDIO_FIGURES = {"loudness_lufs": "loudness (LUFS)", "snr_db": "SNR (dB)", "music_score": "music score", "clipping_ratio": "clipped share"}


def make_plots(clips, split_of_speaker: dict[str, str] | None, cfg: ReleaseConfig, folder: Path) -> None:
    """The card's plots (durations, minutes per speaker, part confidences, audio figures) as PNGs in
    ``folder``; ``split_of_speaker`` None (a run, not a release) draws speakers in one colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    durations = [c.end_s - c.start_s for c in clips.values()]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(durations, bins=20, color="#4477aa")
    ax.set(xlabel="clip duration (s)", ylabel="clips", title="Clip durations")
    fig.tight_layout(), fig.savefig(folder / "durations.png", dpi=100), plt.close(fig)
    per = defaultdict(float)
    for c in clips.values():
        per[speaker_of(c, cfg.speaker_keys, cfg.split_by_identity)] += (c.end_s - c.start_s) / 60
    fig, ax = plt.subplots(figsize=(5, 3))
    names = sorted(per, key=per.get, reverse=True)[:30]
    if split_of_speaker is None:
        ax.bar(range(len(names)), [per[n] for n in names], color="#228833")
        ax.set(xlabel="speaker", ylabel="minutes", title="Minutes per speaker (top 30)")
    else:
        ax.bar(range(len(names)), [per[n] for n in names], color=["#228833" if split_of_speaker.get(n) == "train" else "#ee6677" for n in names])
        ax.set(xlabel="speaker (green: train)", ylabel="minutes", title="Minutes per speaker (top 30)")
    fig.tight_layout(), fig.savefig(folder / "speakers.png", dpi=100), plt.close(fig)
    audio = {k: [c.quality[k] for c in clips.values() if k in c.quality] for k in AUDIO_FIGURES}
    fig, axes = plt.subplots(1, len(AUDIO_FIGURES), figsize=(3 * len(AUDIO_FIGURES), 2.8))
    for ax, (k, label) in zip(axes, AUDIO_FIGURES.items()):
        ax.hist(audio[k] or [0.0], bins=20, color="#aa3377")
        ax.set(xlabel=label, ylabel="clips")
    fig.suptitle("Audio quality per clip")
    fig.tight_layout(), fig.savefig(folder / "audio.png", dpi=100), plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for part in ("face", "mouth", "left_hand", "right_hand", "torso"):
        vals = [c.quality[f"mean_{part}_confidence"] for c in clips.values() if f"mean_{part}_confidence" in c.quality]
        if vals:
            ax.hist(vals, bins=20, range=(0, 1), histtype="step", label=part)
    ax.set(xlabel="mean part confidence per clip", ylabel="clips", title="Part confidences")
    ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(folder / "part_confidence.png", dpi=100), plt.close(fig)


def dataset_card(stats: dict, cfg: ReleaseConfig, version: str) -> str:
    split_rows = "\n".join(f"| {n} | {s['clips']} | {s['hours']:.3f} | {len(s['speakers'])} | {s['shards']} |" for n, s in stats["splits"].items())
    rejects = "\n".join(f"| {k} | {v} |" for k, v in {**stats["failure_reasons"], **stats["rejection_reasons"]}.items()) or "| (none) | |"
    return f"""# {cfg.name} {version} — Chinese News Anchor Speech dataset

- **Licence / terms:** {cfg.licence}. {cfg.terms}
- **Schema version:** {stats['schema_version']} (JSON Schemas in `schemas/`)
- **Size:** {stats['clips']} clips, {stats['hours']:.3f} hours, {stats['speakers']} speakers, {stats['identities']} face identities

| split | clips | hours | speakers | shards |
|---|---|---|---|---|
{split_rows}

Hours per face identity (ids from the run's `identities.json`; each clip's `pose.npz` holds its track's 128-d `face_embedding`):
{", ".join(f"{k} {v:.3f} h" for k, v in stats['per_identity_hours'].items()) or "(no identities: the identity stage did not run)"}

Splits are speaker-disjoint: {stats['split_key']}; assigned
deterministically (seed {cfg.seed}) towards the ratios {cfg.split_ratios}.

## Format
WebDataset shards `<split>/cnas-<split>-NNNNNN.tar`; a sample per clip, key `<video_id>-<index>`:
`json` (clip record: times, transcript with word timings and speakers, quality figures), `mp4`
(H.264, 25 fps), `wav` (16 kHz mono PCM){', `pose.npz` (MediaPipe landmarks, part confidences)' if stats['part_confidence'] else ''}
and, when FLAME was fitted, `flame.npz`. Per split: `<split>.index.json` (wids shard index with
sample counts, sizes, sha256), `<split>/manifest.jsonl` (per-member sizes and sha256). `SHA256SUMS`
covers every file. Check a copy with `cnas validate <dir>`. The YAML header of this card lists the
splits' data files for the Hugging Face Hub and `datasets`; `croissant.json` is the Croissant 1.0
description (files with sha256, a record set `clips_<split>` per split).

```python
import webdataset as wds
ds = wds.WebDataset("train/cnas-train-{{000000..000009}}.tar").decode()
from datasets import load_dataset
hf = load_dataset("path/to/this/folder", split="train")   # reads the configs in this card's YAML header
import mlcroissant as mlc                                   # or through croissant.json
records = mlc.Dataset(jsonld="path/to/this/folder/croissant.json").records(record_set="clips_train")
```

## Statistics
![durations](plots/durations.png) ![speakers](plots/speakers.png) ![parts](plots/part_confidence.png) ![audio](plots/audio.png)

Part confidences (mean per clip): {json.dumps(stats['part_confidence'])}

## What was left out, and why

| reason | count |
|---|---|
{rejects}
"""


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
        if _sha256(str(path)) != digest:
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
    stats = _read_json(root, "stats.json", rep, max_member_bytes, missing=None)
    stats = stats if isinstance(stats, dict) else {}
    metadata_only = (root / RECIPE).exists() and not any(root.glob("*.index.json"))
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
    for index_path in sorted(root.glob("*.index.json")):
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

    split = index_name[: -len(".index.json")]
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


# ---------------------------------------------------------------------------------------------
# metadata-only release (no media: sources, times, crops, checksums; users rebuild with `cnas rebuild`)

RECIPE, CLIPS_JSONL, ARRAY_MEMBERS = "rebuild.json", "clips.jsonl", ("pose.npz", "flame.npz")


def ffmpeg_version() -> str | None:
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def _source_file_sha256(work, video_id: str) -> tuple[str | None, int | None]:
    """sha256 and size of the media file the run ingested for ``video_id`` (its download record in
    the run's ledger), or (None, None) when the record or the file is gone."""
    from .ledger import read_entry

    entry = read_entry(work, video_id, "download")
    if entry is None or entry.status != "ok" or not entry.output:
        return None, None
    path = entry.output.get("media_path")
    try:
        if not path or not work.fs.exists(path):
            return None, None
        h, size = hashlib.sha256(), 0
        with work.fs.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size
    except OSError:
        return None, None


def source_crop_box(clip: ClipRecord) -> list[float] | None:
    """[x0, y0, x1, y1]: the clip frame's corners mapped to the coded source frame (bounding box)."""
    if not clip.clip_to_source:
        return None
    m = np.array(clip.clip_to_source)
    corners = np.array([[0, 0, 1], [clip.width, 0, 1], [0, clip.height, 1], [clip.width, clip.height, 1]], float)
    xy = corners @ m.T
    return [round(float(v), 2) for v in (*xy.min(axis=0), *xy.max(axis=0))]


def package_metadata_release(run_dir: str, version: str, out_dir: str, cfg: ReleaseConfig, with_arrays: bool = False) -> dict:
    """A release without media: per split ``clips.jsonl`` (``ClipSource`` per clip: source URL/path and
    original id, times, frame range, crop box, member checksums, the clip record), ``rebuild.json``
    (the run's normalise and cut options), optionally the pose/FLAME arrays in small tars, schemas,
    stats, card, ``SHA256SUMS``. Same splits as ``package_release``. Returns the stats."""
    from schemas import SourceItem
    from schemas.release import ClipSource, RebuildRecipe

    from .config import load_config
    from .workdir import WorkDir

    run, out = Path(run_dir), Path(out_dir)
    manifest = {r.key: r for r in (ManifestRow.model_validate_json(l) for l in (run / "manifest.jsonl").read_text().splitlines() if l.strip())}
    if not manifest:
        raise ValueError(f"{run_dir}: the manifest lists no samples")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out_dir} exists and is not empty; releases are written once")
    run_cfg = load_config(str(run / "config.yaml"), [])
    sources = {s.video_id: s for s in (SourceItem.model_validate_json(l) for l in (run / "sources.jsonl").read_text().splitlines() if l.strip())}
    work = WorkDir(run_cfg.work_dir or str(run / "work"))
    staging = _staging_for(out, cfg)
    try:
        clips: dict[str, ClipRecord] = {}
        arrays: dict[str, dict[str, bytes]] = {}
        for shard in sorted({r.shard for r in manifest.values()}):
            for key, members in iter_tar_samples(str(run / "shards" / shard)):
                clips[key] = ClipRecord.model_validate_json(members["json"])
                if with_arrays:
                    arrays[key] = {k: v for k, v in members.items() if k in ARRAY_MEMBERS}
        seconds: dict[str, float] = defaultdict(float)
        for c in clips.values():
            seconds[speaker_of(c, cfg.speaker_keys, cfg.split_by_identity)] += c.end_s - c.start_s
        split_of_speaker = assign_splits(seconds, cfg.split_ratios, cfg.seed)
        source_sums = {vid: _source_file_sha256(work, vid) for vid in sorted({c.video_id for c in clips.values()})}
        rows: dict[str, list] = defaultdict(list)
        lines: dict[str, list[str]] = defaultdict(list)
        array_writers = {}
        try:
            for key in sorted(clips):
                c, m = clips[key], manifest[key]
                split = split_of_speaker[speaker_of(c, cfg.speaker_keys, cfg.split_by_identity)]
                item = sources.get(c.video_id) or SourceItem(video_id=c.video_id, uri=c.source_uri, kind="file", metadata=c.source_metadata)
                sha, size = source_sums[c.video_id]
                offset = c.source_media.video_start_s if c.source_media else 0.0
                shipped = sorted(arrays.get(key, {}))
                lines[split].append(ClipSource(
                    key=key, split=split, source=item, original_id=c.provenance.original_id if c.provenance else None,
                    webpage_url=c.provenance.webpage_url if c.provenance else None, source_sha256=sha, source_size_bytes=size,
                    source_start_s=round(c.start_s + offset, 6), source_end_s=round(c.end_s + offset, 6),
                    first_frame=round(c.start_s * c.fps), num_frames=c.num_frames, crop_box=c.crop_box, crop_box_source=source_crop_box(c),
                    audio_shift_frames=c.sync.audio_shift_frames if c.sync else 0,
                    member_sha256=m.member_sha256, member_bytes=m.member_bytes, arrays=shipped, clip=c,
                ).model_dump_json() + "\n")
                rows[split].append(SimpleNamespace(shard=CLIPS_JSONL, duration_s=c.end_s - c.start_s))
                if shipped:
                    if split not in array_writers:
                        (staging / split / "arrays").mkdir(parents=True, exist_ok=True)
                        array_writers[split] = wds.ShardWriter(str(staging / split / "arrays" / f"cnas-{split}-arrays-%06d.tar"),
                                                               maxcount=cfg.max_shard_count, maxsize=int(cfg.target_shard_mb * 2**20),
                                                               verbose=0, mtime=0)
                    array_writers[split].write({"__key__": key, **arrays[key]})
        finally:
            for w in array_writers.values():
                w.close()
        for name in cfg.split_ratios:
            (staging / name).mkdir(parents=True, exist_ok=True)
            (staging / name / CLIPS_JSONL).write_text("".join(lines[name]))
        recipe = RebuildRecipe(
            name=cfg.name, version=version, normalize=run_cfg.normalize.model_dump(mode="json"), clips=run_cfg.clips.model_dump(mode="json"),
            download=run_cfg.download.model_dump(mode="json"),
            ffmpeg_version=ffmpeg_version(), splits=list(cfg.split_ratios), max_shard_count=cfg.max_shard_count,
            target_shard_mb=cfg.target_shard_mb, with_arrays=with_arrays)
        (staging / RECIPE).write_text(recipe.model_dump_json(indent=2) + "\n")
        export_json_schemas(str(staging / "schemas"))
        ingest_stats = json.loads((run / "stats.json").read_text()) if (run / "stats.json").exists() else {}
        stats = release_stats(clips, split_of_speaker, rows, cfg, ingest_stats, version)
        stats["kind"] = "metadata-only"
        stats["sources_without_checksum"] = sorted(v for v, (s, _) in source_sums.items() if s is None)
        for s in stats["splits"].values():
            s["shards"] = 0
        (staging / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
        make_plots(clips, split_of_speaker, cfg, staging / "plots")
        (staging / "README.md").write_text(card_header(stats, cfg, version, metadata_only=True) + metadata_card(stats, cfg, version, with_arrays))
        write_croissant(staging, stats, cfg, version, metadata_only=True)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def metadata_card(stats: dict, cfg: ReleaseConfig, version: str, with_arrays: bool) -> str:
    """The dataset card of a metadata-only release: ``dataset_card`` with its format section replaced."""
    card = dataset_card(stats, cfg, version)
    head, _, rest = card.partition("## Format")
    _, _, tail = rest.partition("## Statistics")
    missing = stats.get("sources_without_checksum") or []
    fmt = f"""## Format: metadata only — rebuild the clips yourself
This release ships **no media**: the sources cannot be redistributed. Per split, `<split>/clips.jsonl`
holds one `ClipSource` record per clip (`schemas/clip_source.schema.json`): the source URL or path and
the platform's original id, the clip's times on the source timeline and its frame range, the crop box
in normalised and in coded source pixels, the sha256 of the source file it was cut from and of every
member (`json`, `mp4`, `wav`{', arrays' if with_arrays else ''}), and the full clip record (transcript, quality figures,
provenance, normalisation). `rebuild.json` holds the normalise and cut options of the run.
{'`<split>/arrays/*.tar` hold the `pose.npz` / `flame.npz` members.' if with_arrays else 'Pose/FLAME arrays are not included.'}
{f'The source files of {len(missing)} videos were gone when this release was packaged; their clips have no source checksum ({", ".join(missing)}).' if missing else ''}

Rebuild (downloads, re-normalises, re-cuts, verifies every member; re-running resumes):
```bash
cnas rebuild <this folder> --out <dir>     # <dir>/rebuild_report.jsonl: rebuilt / differs (with what) / unavailable
cnas validate <dir>
```
A source whose checksum changed is reported as `differs` and not cut (`--accept-changed` cuts it anyway).

"""
    return head + fmt + "## Statistics" + tail


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
            arrays = safe_join(root, split, "arrays")
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
