"""Release packaging: speaker-disjoint splits, resharding, checksums, wids indices, stats, plots and
a dataset card, published with one rename.

    cnas release RUN_DIR --version 1.0 --out RELEASE_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import webdataset as wds

from schemas import SCHEMA_VERSION, ClipRecord, ManifestRow, export_json_schemas
from schemas.release import check_safe_name

from pipeline.engine.run_folder import RunFolder
from pipeline.engine.config import ReleaseConfig
from pipeline.release.croissant import card_header, write_croissant
from pipeline.release.card import AUDIO_FIGURES, dataset_card, make_plots
from pipeline.release.files import CARD, INDEX_SUFFIX, PLOTS_DIR, SCHEMAS_DIR, SPLIT_MANIFEST, STATS, SUMS, iter_tar_samples, sha256_file
from pipeline.release.splits import assign_splits, split_keys, split_key_used


def staging_for(out: Path, cfg: ReleaseConfig) -> Path:
    """Checks before packaging, and the staging folder: next to ``out`` (same file system, so that
    publishing is one rename)."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; releases are written once")
    for name in cfg.split_ratios:
        check_safe_name(name, "release.split_ratios: split")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=str(out.parent)))


def publish(staging: Path, out: Path) -> None:
    """Write ``SHA256SUMS`` over every file of a finished release in ``staging``, then publish it as
    ``out`` with one rename (``out`` absent or an empty folder): a crash leaves no release or the whole one."""
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != SUMS)
    (staging / SUMS).write_text("".join(f"{sha256_file(str(p))}  {p.relative_to(staging)}\n" for p in files))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private; a release folder is as mkdir would make it
    try:
        os.replace(staging, out)  # rename(2): atomic, also over an empty folder
    except OSError as e:
        raise ValueError(f"{out}: cannot publish the release there ({e.strerror}); releases are written once") from None


def package_release(run_dir: str, version: str, out_dir: str, cfg: ReleaseConfig) -> dict:
    """Build the release in ``out_dir`` from an ingest run's shards and manifest; returns the stats."""
    run, out = RunFolder(run_dir), Path(out_dir)
    manifest = run.manifest()
    if not manifest:
        raise ValueError(f"{run_dir}: the manifest lists no samples")
    staging = staging_for(out, cfg)
    try:
        # pass 1: clip records (json members) -> speakers and their hours
        clips: dict[str, ClipRecord] = {}
        for shard in sorted({r.shard for r in manifest}):
            for key, members in iter_tar_samples(run.shard_path(shard)):
                clips[key] = ClipRecord.model_validate_json(members["json"])
        speaker = split_keys(list(clips.values()), cfg.speaker_keys, cfg.split_by_identity)  # rebroadcast groups kept together
        seconds: dict[str, float] = defaultdict(float)
        for c in clips.values():
            seconds[speaker[c.key]] += c.end_s - c.start_s
        split_of_speaker = assign_splits(seconds, cfg.split_ratios, cfg.seed)
        # pass 2: reshard per split, in key order
        writers, rows = {}, defaultdict(list)
        for name in cfg.split_ratios:
            (staging / name).mkdir(parents=True)
            writers[name] = wds.ShardWriter(str(staging / name / f"cnas-{name}-%06d.tar"), maxcount=cfg.max_shard_count,
                                            maxsize=int(cfg.target_shard_mb * 2**20), verbose=0, mtime=0)
        try:
            for shard in sorted({r.shard for r in manifest}):
                for key, members in iter_tar_samples(run.shard_path(shard)):
                    c = clips[key]
                    name = split_of_speaker[speaker[key]]
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
            (staging / name / SPLIT_MANIFEST).write_text("".join(r.model_dump_json() + "\n" for r in rows[name]))
            counts = Counter(r.shard for r in rows[name])
            shardlist = [
                {"url": f"{name}/{s}", "nsamples": counts[s], "filesize": (staging / name / s).stat().st_size,
                 "sha256": sha256_file(str(staging / name / s))}
                for s in sorted(counts)
            ]
            index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": f"{cfg.name}-{version}-{name}", "shardlist": shardlist}
            (staging / f"{name}{INDEX_SUFFIX}").write_text(json.dumps(index, indent=2) + "\n")
        export_json_schemas(str(staging / SCHEMAS_DIR))
        ingest_stats = json.loads(run.dir.read_text(RunFolder.STATS)) if run.dir.exists(RunFolder.STATS) else {}
        stats = release_stats(clips, split_of_speaker, rows, cfg, ingest_stats, version)
        (staging / STATS).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
        make_plots(clips, split_of_speaker, cfg, staging / PLOTS_DIR)
        (staging / CARD).write_text(card_header(stats, cfg, version) + dataset_card(stats, cfg, version))
        write_croissant(staging, stats, cfg, version)
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def release_stats(clips, split_of_speaker, rows, cfg: ReleaseConfig, ingest_stats: dict, version: str) -> dict:
    per_speaker = defaultdict(float)
    speaker = split_keys(list(clips.values()), cfg.speaker_keys, cfg.split_by_identity)
    for c in clips.values():
        per_speaker[speaker[c.key]] += (c.end_s - c.start_s) / 3600
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
        "curation": {k: {"p10": round(float(np.percentile(v, 10)), 5), "p50": round(float(np.percentile(v, 50)), 5),
                         "p90": round(float(np.percentile(v, 90)), 5), "max": round(float(np.max(v)), 5)}
                     for k in CURATION_FIGURES if (v := [c.quality[k] for c in clips.values() if k in c.quality])},
        "curation_flags": dict(sorted(Counter(f for c in clips.values() if c.curation for f in c.curation.flags).items())),
        "duplicates": duplicate_summary(clips.values(), ingest_stats),
        "emotions": emotion_summary(clips.values()),
        "rejection_reasons": ingest_stats.get("rejects_by_reason", {}),
        "failure_reasons": ingest_stats.get("failures_by_reason", {}),
        "skipped_stages": ingest_stats.get("skipped_stages", {}),
    }


#: Curation scores summarised in the release statistics and card (docs/curation.md).
CURATION_FIGURES = ("subtitle_cer", "text_in_crop", "head_movement_avg", "head_rotation_avg", "head_jitter", "camera_pan",
                    "camera_zoom", "camera_shake", "brisque", "brightness", "border_in_crop", "picture_in_picture", "hand_over_mouth")


def emotion_summary(clips) -> dict:
    """The emotion label distribution: human labels (the sources file's ``emotion``), the emotion
    stage's pseudo-labels of the other clips (with their confidence and source), and how many clips
    have neither (they train as the trainer's ``default_emotion``)."""
    clips = list(clips)
    human = Counter(str(c.source_metadata["emotion"]).lower() for c in clips if c.source_metadata.get("emotion"))
    est = [c.emotion_estimate for c in clips if not c.source_metadata.get("emotion") and c.emotion_estimate is not None]
    conf = [e.confidence for e in est]
    return {"labelled": dict(sorted(human.items())), "estimated": dict(sorted(Counter(e.label for e in est).items())),
            "estimated_confidence": {"p10": round(float(np.percentile(conf, 10)), 4), "p50": round(float(np.percentile(conf, 50)), 4),
                                     "p90": round(float(np.percentile(conf, 90)), 4)} if conf else {},
            "estimate_sources": sorted({e.source for e in est}), "unlabelled": len(clips) - sum(human.values()) - len(est)}


def duplicate_summary(clips, ingest_stats: dict) -> dict:
    """Rebroadcast hours: dropped at ingest (``duplicate`` rejects) and, with
    ``curate.duplicates=keep``, the copies beyond the first of each group still in the release."""
    kept_groups: dict[str, list[float]] = defaultdict(list)
    for c in clips:
        if c.curation and c.curation.duplicate_group:
            kept_groups[c.curation.duplicate_group].append(c.end_s - c.start_s)
    extra_s = sum(sum(v) - max(v) for v in kept_groups.values())
    return {"dropped_hours": round(ingest_stats.get("rejected_seconds_by_reason", {}).get("duplicate", 0.0) / 3600, 4),
            "groups_in_release": len(kept_groups), "copy_hours_in_release": round(extra_s / 3600, 4)}


def languages_of(clips) -> dict[str, int]:
    """ISO 639-1 code -> clips: the clip's language, else its transcript's, else the source metadata's."""
    from pipeline.release.croissant import language_of

    out: Counter = Counter()
    for c in clips:
        tag = c.language or (c.transcript.language if c.transcript else None) or c.source_metadata.get("language")
        if (code := language_of(str(tag) if tag else None)):
            out[code] += 1
    return dict(sorted(out.items()))


