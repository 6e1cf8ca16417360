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
import shutil
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

from .config import ReleaseConfig
from .croissant import card_header, check_metadata, write_croissant

SUMS = "SHA256SUMS"


def iter_tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) of a WebDataset tar in file order; raises on a truncated/corrupt tar."""
    current, members = None, {}
    with tarfile.open(path, mode="r|") as tar:  # stream mode: reads every block, so truncation surfaces
        for m in tar:
            if not m.isfile():
                continue
            key, _, suffix = m.name.partition(".")
            data = tar.extractfile(m).read()
            if len(data) != m.size:
                raise tarfile.ReadError(f"{m.name}: {len(data)} of {m.size} bytes")
            if key != current and current is not None:
                yield current, members
                members = {}
            current = key
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


def _publish(staging: Path, out: Path) -> None:
    """Write ``SHA256SUMS`` over every file of a finished release in ``staging`` and move it into ``out``."""
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != SUMS)
    (staging / SUMS).write_text("".join(f"{_sha256(str(p))}  {p.relative_to(staging)}\n" for p in files))
    out.mkdir(parents=True, exist_ok=True)
    for p in staging.iterdir():
        shutil.move(str(p), str(out / p.name))


def package_release(run_dir: str, version: str, out_dir: str, cfg: ReleaseConfig) -> dict:
    """Build the release in ``out_dir`` from an ingest run's shards and manifest; returns the stats."""
    run, out = Path(run_dir), Path(out_dir)
    manifest = [ManifestRow.model_validate_json(l) for l in (run / "manifest.jsonl").read_text().splitlines() if l.strip()]
    if not manifest:
        raise ValueError(f"{run_dir}: the manifest lists no samples")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out_dir} exists and is not empty; releases are written once")
    staging = Path(tempfile.mkdtemp(prefix="cnas-release-", dir=str(out.parent) if out.parent.exists() else None))
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


def _mp4_frames(data: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                              "stream=nb_read_packets", "-of", "csv=p=0", f.name], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def validate_release(folder: str, check_media: bool = True) -> ValidationReport:
    """Check a release: checksums, every shard readable, same members per sample, json valid,
    arrays and media lengths equal the frame/sample counts, member hashes, disjoint speakers."""
    import soundfile as sf
    from pydantic import ValidationError

    root, rep = Path(folder), ValidationReport()
    sums = root / SUMS
    if not sums.exists():
        rep.errors.append(f"{SUMS} is missing")
    else:
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            p = root / name
            if not p.exists():
                rep.errors.append(f"{name}: listed in {SUMS} but missing")
            elif _sha256(str(p)) != digest:
                rep.errors.append(f"{name}: sha256 differs from {SUMS} (corrupted or modified)")
    stats = json.loads((root / "stats.json").read_text()) if (root / "stats.json").exists() else {}
    metadata_only = (root / RECIPE).exists() and not any(root.glob("*.index.json"))
    seen_speakers: dict[str, str] = {}
    for split, info in stats.get("splits", {}).items():
        for spk in info["speakers"]:
            if spk in seen_speakers:
                rep.errors.append(f"speaker {spk!r} is in both {seen_speakers[spk]} and {split}")
            seen_speakers[spk] = split
    for index_path in sorted(root.glob("*.index.json")):
        split = index_path.name.split(".")[0]
        index = json.loads(index_path.read_text())
        manifest = {}
        if (root / split / "manifest.jsonl").exists():
            manifest = {r.key: r for r in (ManifestRow.model_validate_json(l) for l in (root / split / "manifest.jsonl").read_text().splitlines() if l)}
        member_set = None
        for entry in index["shardlist"]:
            rep.shards += 1
            path = root / entry["url"]
            if not path.exists():
                rep.errors.append(f"{entry['url']}: missing")
                continue
            if path.stat().st_size != entry["filesize"]:
                rep.errors.append(f"{entry['url']}: {path.stat().st_size} bytes, index says {entry['filesize']}")
            n = 0
            try:
                for key, members in iter_tar_samples(str(path)):
                    n += 1
                    rep.samples += 1
                    where = f"{entry['url']}:{key}"
                    if member_set is None:
                        member_set = set(members)
                    elif set(members) != member_set:
                        rep.errors.append(f"{where}: members {sorted(members)} differ from {sorted(member_set)}")
                    row = manifest.get(key)
                    if row is not None:
                        for suffix, data in members.items():
                            if hashlib.sha256(data).hexdigest() != row.member_sha256.get(suffix):
                                rep.errors.append(f"{where}.{suffix}: sha256 differs from {split}/manifest.jsonl (tampered)")
                    try:
                        clip = ClipRecord.model_validate_json(members.get("json", b"{}"))
                    except ValidationError as e:
                        first = e.errors()[0]
                        loc = ".".join(map(str, first["loc"])) or "record"
                        rep.errors.append(f"{where}.json: does not validate ({loc}): {first['msg']}")
                        continue
                    rep.errors += [f"{where}: {m}" for m in _check_sample(clip, members, check_media, sf)]
            except (tarfile.TarError, OSError, EOFError) as e:
                rep.errors.append(f"{entry['url']}: unreadable or truncated tar ({type(e).__name__}: {e})")
                continue
            if n != entry["nsamples"]:
                rep.errors.append(f"{entry['url']}: {n} samples, index says {entry['nsamples']}")
    rep.errors += check_metadata(root)
    if metadata_only:
        validate_metadata_release(root, rep)
    elif rep.shards == 0:
        rep.errors.append("no shard index (*.index.json) found")
    return rep


def _check_sample(clip: ClipRecord, members: dict[str, bytes], check_media: bool, sf) -> list[str]:
    errs = []
    if set(clip.members) != set(members):
        errs.append(f"json lists members {clip.members}, the sample has {sorted(members)}")
    if "wav" in members:
        info = sf.info(io.BytesIO(members["wav"]))
        if info.frames != clip.num_audio_samples or info.samplerate != clip.sample_rate_hz:
            errs.append(f"wav has {info.frames} samples at {info.samplerate} Hz, json says {clip.num_audio_samples} at {clip.sample_rate_hz}")
    if abs(clip.num_frames / clip.fps - clip.num_audio_samples / clip.sample_rate_hz) > 1 / clip.fps + 1e-6:
        errs.append("audio and video durations disagree")
    if check_media and "mp4" in members:
        frames = _mp4_frames(members["mp4"])
        if frames != clip.num_frames:
            errs.append(f"mp4 has {frames} frames, json says {clip.num_frames}")
    for member, key in (("pose.npz", "part_confidences"), ("flame.npz", "exp")):
        if member in members:
            with np.load(io.BytesIO(members[member])) as z:
                if z[key].shape[0] != clip.num_frames:
                    errs.append(f"{member}:{key} has {z[key].shape[0]} frames, json says {clip.num_frames}")
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
    staging = Path(tempfile.mkdtemp(prefix="cnas-release-", dir=str(out.parent) if out.parent.exists() else None))
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


def validate_metadata_release(root: Path, rep: "ValidationReport") -> None:
    """Checks of a metadata-only release beyond ``SHA256SUMS``: every clips.jsonl line validates."""
    from pydantic import ValidationError

    from schemas.release import ClipSource, RebuildRecipe

    try:
        recipe = RebuildRecipe.model_validate_json((root / RECIPE).read_text())
    except ValidationError as e:
        rep.errors.append(f"{RECIPE}: does not validate: {e.errors()[0]['msg']}")
        return
    for split in recipe.splits:
        path = root / split / CLIPS_JSONL
        if not path.exists():
            rep.errors.append(f"{split}/{CLIPS_JSONL}: missing")
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
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
