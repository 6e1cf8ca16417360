"""Rebuild a metadata-only release: fetch every source, check it against the release's checksum,
normalise and cut it again with the functions and options the ingest run used, verify every
member against the release's checksums, write shards in the release layout and a report.

    cnas rebuild RELEASE_DIR --out DIR [--accept-changed] [--source-dir DIR]

Per clip the outcome is ``rebuilt`` (every member identical), ``differs`` (the source changed — not
cut unless ``accept_changed`` — or a re-cut member differs; the report names which) or
``unavailable`` (the source could not be fetched or normalised). Resumable: ``OUT/work/ledger``
keeps one result per clip; a re-run skips the clips already rebuilt and retries the rest.
Everything here runs in the driver process (no Ray); the stage functions are called, not copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import webdataset as wds

from schemas import ManifestRow, SourceItem
from schemas import shard as layout
from schemas.release import ClipSource, RebuildRecipe, RebuildResult
from stages.clips import ClipOptions, make_clips
from stages.download import DownloadOptions, download
from stages.errors import StageError, temp_name
from stages.normalize import NormalizeOptions, normalize

from .croissant import write_rebuilt_metadata
from .release import ARRAY_MEMBERS, CLIPS_JSONL, RECIPE, SUMS, _sha256, ffmpeg_version, iter_tar_samples

REPORT, SUMMARY, WORK = "rebuild_report.jsonl", "rebuild_summary.json", "work"


def read_release(release_dir: str) -> tuple[RebuildRecipe, list[ClipSource]]:
    root = Path(release_dir)
    if not (root / RECIPE).exists():
        raise ValueError(f"{release_dir}: no {RECIPE}; not a metadata-only release (`cnas release --metadata-only`)")
    recipe = RebuildRecipe.model_validate_json((root / RECIPE).read_text())
    clips = []
    for split in recipe.splits:
        path = root / split / CLIPS_JSONL
        clips += [ClipSource.model_validate_json(l) for l in path.read_text().splitlines() if l.strip()]
    return recipe, clips


def _shipped_arrays(root: Path, split: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted((root / split / "arrays").glob("*.tar")):
        for key, members in iter_tar_samples(str(tar)):
            out[key] = members
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(str(path), path.suffix)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class _Ledger:
    """One ``RebuildResult`` per clip under ``OUT/work/ledger/<key>.json``."""

    def __init__(self, work: Path):
        self.dir = work / "ledger"
        self.clips = work / "clips"

    def get(self, key: str) -> RebuildResult | None:
        p = self.dir / f"{key}.json"
        try:
            return RebuildResult.model_validate_json(p.read_text()) if p.exists() else None
        except ValueError:
            return None

    def done(self, key: str) -> bool:
        """Rebuilt, and every member it wrote is still there."""
        r = self.get(key)
        return r is not None and r.status == "rebuilt" and all(
            (self.clips / layout.member_name(key, m)).exists() for m in r.member_sha256)

    def put(self, r: RebuildResult) -> None:
        _write_atomic(self.dir / f"{r.key}.json", r.model_dump_json().encode())

    def write_members(self, key: str, members: dict[str, bytes]) -> None:
        for suffix, data in members.items():
            _write_atomic(self.clips / layout.member_name(key, suffix), data)

    def read_members(self, key: str, suffixes) -> dict[str, bytes]:
        return {s: (self.clips / layout.member_name(key, s)).read_bytes() for s in suffixes}


def _local_item(item: SourceItem, source_dir: str | None) -> SourceItem:
    """A local source moved since the release: look for its file name in ``source_dir``."""
    if item.kind == "file" and source_dir and not os.path.exists(item.uri):
        candidate = os.path.join(source_dir, os.path.basename(item.uri))
        if os.path.exists(candidate):
            return item.model_copy(update={"uri": candidate})
    return item


def rebuild_release(
    release_dir: str,
    out_dir: str,
    download_overrides: dict | None = None,
    accept_changed: bool = False,
    source_dir: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Rebuild every clip of the metadata-only release in ``release_dir`` into ``out_dir``; returns
    the summary (counts per status, clips cut and skipped in this run)."""
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root, out = Path(release_dir), Path(out_dir)
    recipe, sources = read_release(release_dir)
    work = out / WORK
    ledger = _Ledger(work)
    norm_opts = NormalizeOptions.model_validate(recipe.normalize)
    clip_opts = ClipOptions.model_validate(recipe.clips)
    dl_opts = DownloadOptions.model_validate({**recipe.download, **(download_overrides or {})})
    here_ffmpeg = ffmpeg_version()
    arrays: dict[str, dict[str, bytes]] = {}
    if recipe.with_arrays:
        for split in recipe.splits:
            arrays.update(_shipped_arrays(root, split))
    by_video: dict[str, list[ClipSource]] = defaultdict(list)
    for cs in sources:
        by_video[cs.source.video_id].append(cs)
    skipped = cut = 0
    for n, (video_id, group) in enumerate(sorted(by_video.items()), 1):
        pending = [cs for cs in group if not ledger.done(cs.key)]
        skipped += len(group) - len(pending)
        if not pending:
            say(f"[{n}/{len(by_video)}] {video_id}: {len(group)} clips already rebuilt")
            continue
        results = _rebuild_video(video_id, pending, work, ledger, norm_opts, clip_opts, dl_opts, arrays, accept_changed,
                                 source_dir, recipe.ffmpeg_version, here_ffmpeg)
        cut += sum(r.in_shards for r in results)
        for r in results:
            ledger.put(r)
        counts = Counter(r.status for r in results)
        first_reason = next((r.reasons[0] for r in results if r.status != "rebuilt" and r.reasons), "")
        say(f"[{n}/{len(by_video)}] {video_id}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            + (f" ({first_reason})" if first_reason else ""))
    results = [ledger.get(cs.key) for cs in sorted(sources, key=lambda c: c.key)]
    _write_outputs(root, out, recipe, sources, results, ledger)
    counts = Counter(r.status for r in results)
    summary = {
        "release": str(root), "clips": len(sources), "rebuilt": counts["rebuilt"], "differs": counts["differs"],
        "unavailable": counts["unavailable"], "cut_this_run": cut, "skipped_already_rebuilt": skipped,
        "identity": "byte-identical members (sha256) against the release's checksums",
        "ffmpeg_release": recipe.ffmpeg_version, "ffmpeg_here": here_ffmpeg,
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    say(f"rebuild: {summary['rebuilt']} rebuilt, {summary['differs']} differ, {summary['unavailable']} unavailable "
        f"({cut} cut now, {skipped} already rebuilt); report: {out / REPORT}")
    return summary


def _rebuild_video(video_id, pending: list[ClipSource], work: Path, ledger: _Ledger, norm_opts, clip_opts, dl_opts, arrays,
                   accept_changed: bool, source_dir, release_ffmpeg, here_ffmpeg) -> list[RebuildResult]:
    def result(cs: ClipSource, status: str, reasons: list[str], **kw) -> RebuildResult:
        return RebuildResult(key=cs.key, split=cs.split, video_id=video_id, status=status, reasons=reasons, **kw)

    item = _local_item(pending[0].source, source_dir)
    dl_dir, media_dir = work / "sources" / video_id, work / "media" / video_id
    try:
        try:
            got = download(item, str(dl_dir), dl_opts)
        except StageError as e:
            return [result(cs, "unavailable", [f"source unavailable ({e.reason}): {e.message}"]) for cs in pending]
        sha = _sha256(got.media_path)
        to_cut, results = [], []
        for cs in pending:
            if cs.source_sha256 is not None and cs.source_sha256 != sha:
                why = f"source changed: sha256 {sha}, the release recorded {cs.source_sha256}"
                if not accept_changed:
                    results.append(result(cs, "differs", [why + " (not cut; --accept-changed cuts it anyway)"], source_changed=True,
                                          source_sha256=sha))
                    continue
            to_cut.append(cs)
        if not to_cut:
            return results
        try:
            media = normalize(video_id, got.media_path, str(media_dir), norm_opts, language=item.metadata.get("language"))
        except StageError as e:
            return results + [result(cs, "unavailable", [f"the source could not be normalised ({e.reason}): {e.message}"],
                                     source_sha256=sha) for cs in to_cut]
        for cs in to_cut:
            results.append(_cut_one(cs, media, item, clip_opts, arrays, ledger, sha, release_ffmpeg, here_ffmpeg, result))
        return results
    finally:
        shutil.rmtree(media_dir, ignore_errors=True)
        shutil.rmtree(dl_dir, ignore_errors=True)


def _cut_one(cs: ClipSource, media, item: SourceItem, clip_opts: ClipOptions, arrays, ledger: _Ledger, sha: str,
             release_ffmpeg, here_ffmpeg, result) -> RebuildResult:
    clip = cs.clip
    crop = tuple(cs.crop_box) if cs.crop_box else None
    reasons: list[str] = []
    changed = cs.source_sha256 is not None and cs.source_sha256 != sha
    if changed:
        reasons.append(f"source changed: sha256 {sha}, the release recorded {cs.source_sha256} (cut: --accept-changed)")
    if cs.source_sha256 is None:
        reasons.append("the release recorded no source checksum: the source could not be verified")
    with tempfile.TemporaryDirectory(prefix="cnas-rebuild-") as tmp:
        try:
            got = make_clips(media, item.uri, tmp, clip_opts, item.metadata, windows=[(cs.first_frame, cs.num_frames)],
                             crops=[crop], crop_size=clip.width if crop else None, syncs=[clip.sync])
        except StageError as e:
            return result(cs, "differs", reasons + [f"cutting failed ({e.reason}): {e.message}"], source_changed=changed, source_sha256=sha)
        if not got:
            return result(cs, "differs", reasons + ["the normalised source is shorter than the clip"], source_changed=changed, source_sha256=sha)
        cut_key = got[0].key
        members = {layout.JSON: clip.model_dump_json().encode("utf-8")}
        for suffix in (layout.MP4, layout.WAV):
            members[suffix] = Path(tmp, layout.member_name(cut_key, suffix)).read_bytes()
    for suffix, data in arrays.get(cs.key, {}).items():
        if suffix in ARRAY_MEMBERS:
            members[suffix] = data
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}
    differing = sorted(k for k, d in digests.items() if cs.member_sha256.get(k) not in (None, d))
    missing = sorted(set(cs.member_sha256) - set(members))
    for m in differing:
        reasons.append(f"{m}: sha256 {digests[m]} differs from the release's {cs.member_sha256[m]}"
                       + (f" (ffmpeg here: {here_ffmpeg!r}; release: {release_ffmpeg!r})" if m == layout.MP4 and here_ffmpeg != release_ffmpeg else ""))
    if missing:
        reasons.append(f"not in this release (packaged without --with-arrays): {', '.join(missing)}")
    ledger.write_members(cs.key, members)
    status = "differs" if changed or differing else "rebuilt"
    return result(cs, status, reasons, source_changed=changed, source_sha256=sha, differing_members=differing,
                  missing_members=missing, member_sha256=digests, in_shards=True)


def _write_outputs(root: Path, out: Path, recipe: RebuildRecipe, sources: list[ClipSource], results: list[RebuildResult],
                   ledger: _Ledger) -> None:
    """Shards of every clip that was cut (per split, key order), manifests, wids indices, the card,
    schemas and stats of the release, the report and ``SHA256SUMS`` — rewritten on every run."""
    (out / REPORT).write_text("".join(r.model_dump_json() + "\n" for r in results))
    split_of = {cs.key: cs.split for cs in sources}
    record_of = {cs.key: cs.clip for cs in sources}
    for split in recipe.splits:
        d = out / split
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        rows = []
        with wds.ShardWriter(str(d / f"cnas-{split}-%06d.tar"), maxcount=recipe.max_shard_count,
                             maxsize=int(recipe.target_shard_mb * 2**20), verbose=0, mtime=0) as writer:
            for r in results:
                if split_of[r.key] != split or not r.in_shards:
                    continue
                members = ledger.read_members(r.key, [s for s in layout.ALL_MEMBERS if s in r.member_sha256])
                writer.write({"__key__": r.key, **members})
                c = record_of[r.key]
                rows.append(ManifestRow(key=r.key, shard=os.path.basename(writer.fname), video_id=c.video_id, duration_s=c.end_s - c.start_s,
                                        member_bytes={k: len(v) for k, v in members.items()},
                                        member_sha256={k: hashlib.sha256(v).hexdigest() for k, v in members.items()}))
        if not rows:  # ShardWriter opened an empty first shard
            for t in d.glob("*.tar"):
                t.unlink()
        (d / "manifest.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
        counts = Counter(r.shard for r in rows)
        index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": f"{recipe.name}-{recipe.version}-{split}",
                 "shardlist": [{"url": f"{split}/{s}", "nsamples": counts[s], "filesize": (d / s).stat().st_size,
                                "sha256": _sha256(str(d / s))} for s in sorted(counts)]}
        (out / f"{split}.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name in ("README.md", "stats.json", RECIPE):
        if (root / name).exists():
            shutil.copy2(root / name, out / name)
    for name in ("schemas", "plots"):
        if (root / name).exists():
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(root / name, out / name)
    if (out / "stats.json").exists():
        write_rebuilt_metadata(out)  # the card's data_files and croissant.json: the shards, not clips.jsonl
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in (SUMS, SUMMARY) and WORK not in p.relative_to(out).parts[:1])
    (out / SUMS).write_text("".join(f"{_sha256(str(p))}  {p.relative_to(out)}\n" for p in files))
