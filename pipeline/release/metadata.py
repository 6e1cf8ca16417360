"""The metadata-only release: sources, times, crops and checksums, no media (users rebuild the clips
with ``cnas rebuild``).

    cnas release RUN_DIR --version 1.0 --out RELEASE_DIR --metadata-only
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import webdataset as wds

from schemas import ClipRecord, export_json_schemas

from pipeline.engine.run_folder import RunFolder
from pipeline.engine.config import ReleaseConfig
from pipeline.release.croissant import card_header, write_croissant
from pipeline.release.card import dataset_card, make_plots
from pipeline.release.files import ARRAYS_DIR, ARRAY_MEMBERS, CARD, CLIPS_JSONL, PLOTS_DIR, RECIPE, SCHEMAS_DIR, STATS, iter_tar_samples
from pipeline.release.package import publish, staging_for, release_stats
from pipeline.release.splits import assign_splits, split_keys




def ffmpeg_version() -> str | None:
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def _source_file_sha256(work, video_id: str) -> tuple[str | None, int | None]:
    """sha256 and size of the media file the run ingested for ``video_id`` (its download record in
    the run's ledger), or (None, None) when the record or the file is gone."""
    from pipeline.engine.ledger import read_entry

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

    from pipeline.engine.config import load_config
    run, out = RunFolder(run_dir), Path(out_dir)
    manifest = {r.key: r for r in run.manifest()}
    if not manifest:
        raise ValueError(f"{run_dir}: the manifest lists no samples")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out_dir} exists and is not empty; releases are written once")
    run_cfg = load_config(run.path(RunFolder.CONFIG), [])
    sources = {s.video_id: s for s in run.sources()}
    work = run.work(run_cfg)
    staging = staging_for(out, cfg)
    try:
        clips: dict[str, ClipRecord] = {}
        arrays: dict[str, dict[str, bytes]] = {}
        for shard in sorted({r.shard for r in manifest.values()}):
            for key, members in iter_tar_samples(run.shard_path(shard)):
                clips[key] = ClipRecord.model_validate_json(members["json"])
                if with_arrays:
                    arrays[key] = {k: v for k, v in members.items() if k in ARRAY_MEMBERS}
        speaker = split_keys(list(clips.values()), cfg.speaker_keys, cfg.split_by_identity)  # rebroadcast groups kept together
        seconds: dict[str, float] = defaultdict(float)
        for c in clips.values():
            seconds[speaker[c.key]] += c.end_s - c.start_s
        split_of_speaker = assign_splits(seconds, cfg.split_ratios, cfg.seed)
        source_sums = {vid: _source_file_sha256(work, vid) for vid in sorted({c.video_id for c in clips.values()})}
        rows: dict[str, list] = defaultdict(list)
        lines: dict[str, list[str]] = defaultdict(list)
        array_writers = {}
        try:
            for key in sorted(clips):
                c, m = clips[key], manifest[key]
                split = split_of_speaker[speaker[key]]
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
                        (staging / split / ARRAYS_DIR).mkdir(parents=True, exist_ok=True)
                        array_writers[split] = wds.ShardWriter(str(staging / split / ARRAYS_DIR / f"cnas-{split}-arrays-%06d.tar"),
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
        export_json_schemas(str(staging / SCHEMAS_DIR))
        ingest_stats = json.loads(run.dir.read_text(RunFolder.STATS)) if run.dir.exists(RunFolder.STATS) else {}
        stats = release_stats(clips, split_of_speaker, rows, cfg, ingest_stats, version)
        stats["kind"] = "metadata-only"
        stats["sources_without_checksum"] = sorted(v for v, (s, _) in source_sums.items() if s is None)
        for s in stats["splits"].values():
            s["shards"] = 0
        (staging / STATS).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
        make_plots(clips, split_of_speaker, cfg, staging / PLOTS_DIR)
        (staging / CARD).write_text(card_header(stats, cfg, version, metadata_only=True) + metadata_card(stats, cfg, version, with_arrays))
        write_croissant(staging, stats, cfg, version, metadata_only=True)
        publish(staging, out)
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


