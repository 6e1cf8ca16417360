"""Rebuild a metadata-only release: fetch every source, check it against the release's checksum,
normalise and cut it again with the functions and options the ingest run used, verify every
member against the release's checksums, write shards in the release layout and a report.

    cnas rebuild RELEASE_DIR --out DIR [--accept-changed] [--source-dir DIR] [--config YAML] [--set SECTION.KEY=VALUE]

Per clip the outcome is ``rebuilt`` (every member identical), ``differs`` (the source changed — not
cut unless ``accept_changed`` — or a re-cut member differs; the report names which), ``unverified``
(cut, but the release recorded no checksum for some member) or ``unavailable`` (the source could
not be fetched or normalised). Resumable: ``OUT/work/ledger`` keeps one result per clip; a re-run
skips the clips already rebuilt and retries the rest.
Everything here runs in the driver process (no Ray); the stage functions are called, not copied.

A release is untrusted input (docs/release.md, "Untrusted releases"): it is checked before anything
is written (no link, device or hard link in it; split, shard and member names are safe path
components; every path stays inside its folder; tar members capped), only the output-affecting
options come from its ``rebuild.json`` — runtime and safety settings (cookies, timeouts, retries,
``max_filesize_mb``, ``allow_file_urls``) are the consumer's — and a local source is looked up only
inside ``--source-dir``.
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
from urllib.parse import urlsplit

import webdataset as wds
from pydantic import BaseModel, ValidationError

from schemas import ManifestRow, SourceItem
from schemas import shard as layout
from schemas.release import ClipSource, RebuildRecipe, RebuildResult
from schemas.settings import output_fields
from stages.clips import ClipOptions, make_clips
from stages.download import DownloadOptions, download
from stages.errors import StageError
from stages.files import write_bytes
from stages.normalize import NormalizeOptions, normalize

from pipeline.release.croissant import write_rebuilt_metadata
from pipeline.engine.lock import LOCK_FILE, output_lock
from pipeline.release.files import (
    ARRAYS_DIR, ARRAY_MEMBERS, CARD, CLIPS_JSONL, INDEX_SUFFIX, MAX_MEMBER_BYTES, PLOTS_DIR, RECIPE, SCHEMAS_DIR,
    SPLIT_MANIFEST, STATS, SUMS, UnsafeReleaseError, UnsafeTarError, iter_tar_samples, read_capped, safe_join,
    sha256_file, unsafe_entries)
from pipeline.release.metadata import ffmpeg_version

REPORT, SUMMARY, WORK = "rebuild_report.jsonl", "rebuild_summary.json", "work"

#: The option sections a release's ``rebuild.json`` holds, and their models.
SECTIONS: dict[str, type[BaseModel]] = {"download": DownloadOptions, "normalize": NormalizeOptions, "clips": ClipOptions}
#: Output-affecting in the model, but they guard the consumer's machine: always the consumer's, never a release's.
CONSUMER_ONLY: dict[str, tuple[str, ...]] = {"download": ("max_filesize_mb", "allow_file_urls")}
#: Output-affecting settings added after releases were made: what a recipe without them was cut with.
BEFORE_FIELD: dict[str, dict[str, object]] = {"clips": {"keyframe_every_s": None}}
#: x264 presets (``normalize.preset``, ``clips.preset`` of a recipe must be one).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


def recipe_fields(section: str) -> list[str]:
    """The settings of ``section`` a release's recipe decides: output-affecting, not consumer-only."""
    return [f for f in output_fields(SECTIONS[section]) if f not in CONSUMER_ONLY.get(section, ())]


def consumer_fields(section: str) -> list[str]:
    """The settings of ``section`` the consumer decides (``--config`` / ``--set``): the runtime ones
    (cookies, timeouts, retries, rate limit) and the consumer-only safety ones."""
    return [f for f in SECTIONS[section].model_fields if f not in recipe_fields(section)]


def effective_options(recipe: RebuildRecipe, consumer=None, download_overrides: dict | None = None
                      ) -> tuple[NormalizeOptions, ClipOptions, DownloadOptions, list[str]]:
    """The options a rebuild runs with: the recipe's output-affecting ones (missing: the defaults),
    the consumer's runtime and safety ones (``consumer``: a ``pipeline.engine.config.Config``, None: the
    defaults; ``download_overrides`` on top). ``download.allow_file_urls`` is false unless the consumer
    set it. Returns also the recipe settings that were ignored because they differ from what is used."""
    from pipeline.engine.config import Config

    consumer = consumer if consumer is not None else Config()
    ignored: list[str] = []
    built = {}
    for section, model in SECTIONS.items():
        given = getattr(recipe, section)
        unknown = sorted(set(given) - set(model.model_fields))
        if unknown:
            raise UnsafeReleaseError(f"{RECIPE}: {section} has settings this version does not know: {unknown}")
        mine = getattr(consumer, section)
        data = {k: v for k, v in given.items() if k in recipe_fields(section)}
        data.update({k: v for k, v in BEFORE_FIELD.get(section, {}).items() if k not in given})
        data.update({k: getattr(mine, k) for k in consumer_fields(section)})
        if section == "download":
            if "allow_file_urls" not in mine.model_fields_set:
                data["allow_file_urls"] = False  # a release's file:// URL reads a local path: only when the consumer says so
            data.update(download_overrides or {})
        try:
            opts = model.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            raise UnsafeReleaseError(f"{RECIPE}: {section}.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        if getattr(opts, "preset", X264_PRESETS[0]) not in X264_PRESETS:
            raise UnsafeReleaseError(f"{RECIPE}: {section}.preset {opts.preset!r} is not an x264 preset")
        ignored += [f"{section}.{k}" for k, v in given.items() if k in consumer_fields(section) and v != getattr(opts, k)]
        built[section] = opts
    return built["normalize"], built["clips"], built["download"], ignored


def read_release(release_dir: str, max_bytes: int = MAX_MEMBER_BYTES) -> tuple[RebuildRecipe, list[ClipSource]]:
    """The recipe and clips of a metadata-only release, refused (``UnsafeReleaseError``) when it holds
    a link, device or hard link, a name that is no safe path component, a path leaving it, a file
    over ``max_bytes``, a record that does not validate or a key twice."""
    root = Path(release_dir)
    if not (root / RECIPE).exists():
        raise ValueError(f"{release_dir}: no {RECIPE}; not a metadata-only release (`cnas release --metadata-only`)")
    problems = unsafe_entries(root)
    if problems:
        raise UnsafeReleaseError(f"{release_dir}: refused, it holds entries a release must not: " + "; ".join(problems[:5])
                                 + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    try:
        recipe = RebuildRecipe.model_validate_json(read_capped(root / RECIPE, max_bytes, RECIPE))
    except ValidationError as e:
        first = e.errors()[0]
        raise UnsafeReleaseError(f"{release_dir}: {RECIPE} does not validate ({'.'.join(map(str, first['loc']))}): {first['msg']}") from None
    clips: list[ClipSource] = []
    seen: set[str] = set()
    for split in recipe.splits:
        path = safe_join(root, split, CLIPS_JSONL)
        for n, line in enumerate(read_capped(path, max_bytes, f"{split}/{CLIPS_JSONL}").decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                cs = ClipSource.model_validate_json(line)
            except ValidationError as e:
                first = e.errors()[0]
                raise UnsafeReleaseError(f"{release_dir}: {split}/{CLIPS_JSONL}:{n} does not validate "
                                         f"({'.'.join(map(str, first['loc']))}): {first['msg']}") from None
            if cs.split != split or cs.key in seen:
                raise UnsafeReleaseError(f"{release_dir}: {split}/{CLIPS_JSONL}:{n}: {cs.key} "
                                         + (f"says split {cs.split!r}" if cs.split != split else "is listed twice"))
            seen.add(cs.key)
            clips.append(cs)
    if (root / STATS).exists():
        try:
            stats = json.loads(read_capped(root / STATS, max_bytes, STATS))
            names = set(stats.get("splits", {}))
        except (ValueError, AttributeError, TypeError):
            raise UnsafeReleaseError(f"{release_dir}: stats.json does not parse") from None
        if not names <= set(recipe.splits):
            raise UnsafeReleaseError(f"{release_dir}: stats.json names splits {sorted(names - set(recipe.splits))} that {RECIPE} does not")
    return recipe, clips


def _shipped_arrays(root: Path, split: str, keys: set[str], max_bytes: int) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    folder = safe_join(root, split, ARRAYS_DIR)
    for tar in sorted(folder.glob("*.tar")) if folder.is_dir() else []:
        try:
            for key, members in iter_tar_samples(str(tar), max_bytes):
                if key in keys:
                    out[key] = {k: v for k, v in members.items() if k in ARRAY_MEMBERS}
        except UnsafeTarError as e:
            raise UnsafeReleaseError(f"{split}/arrays/{tar.name}: refused: {e}") from None
    return out


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
        write_bytes(str(self.dir / f"{r.key}.json"), r.model_dump_json().encode())

    def write_members(self, key: str, members: dict[str, bytes]) -> None:
        for suffix, data in members.items():
            write_bytes(str(self.clips / layout.member_name(key, suffix)), data)

    def read_members(self, key: str, suffixes) -> dict[str, bytes]:
        return {s: (self.clips / layout.member_name(key, s)).read_bytes() for s in suffixes}


def _source_item(item: SourceItem, source_dir: str | None, dl_opts: DownloadOptions) -> SourceItem:
    """The source as this rebuild fetches it. A local one (``kind=file``) only from ``source_dir``: an
    absolute recorded path by its file name, a relative one below it, never leaving it (symlinks
    resolved). A URL: http(s); ``file://`` only with the consumer's ``download.allow_file_urls``."""
    if item.kind == "file":
        if not source_dir:
            raise StageError("needs_source_dir", f"a local source ({item.uri}): give --source-dir, the folder that holds it "
                                                 "(a release's paths are never opened as they are)")
        rel = os.path.basename(item.uri) if os.path.isabs(item.uri) else item.uri
        try:
            path = safe_join(source_dir, rel)
        except UnsafeReleaseError as e:
            raise StageError("outside_source_dir", f"{item.uri}: {e}") from None
        return item.model_copy(update={"uri": str(path)})
    scheme = urlsplit(item.uri).scheme.lower()
    if scheme in ("http", "https") or (scheme == "file" and dl_opts.allow_file_urls):
        return item
    raise StageError("unsupported_url", f"{item.uri}: a rebuild fetches http(s) URLs only"
                     + (" (file:// with --set download.allow_file_urls=true)" if scheme == "file" else ""))


def rebuild_release(
    release_dir: str,
    out_dir: str,
    download_overrides: dict | None = None,
    accept_changed: bool = False,
    source_dir: str | None = None,
    echo: Callable[[str], None] | None = None,
    consumer=None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> dict:
    """Rebuild every clip of the metadata-only release in ``release_dir`` into ``out_dir``; returns
    the summary (counts per status, clips cut and skipped in this run). ``consumer``: the consumer's
    ``Config`` (its runtime and safety settings are used; None: the defaults), ``download_overrides``
    on top of its download section. The release is checked (``read_release``) before anything is written."""
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root, out = Path(release_dir), Path(out_dir)
    recipe, sources = read_release(release_dir, max_member_bytes)
    here, there = out.resolve(), root.resolve()
    if here == there or there in here.parents or here in there.parents:
        raise ValueError(f"--out {out_dir} and the release {release_dir} must not hold one another")
    norm_opts, clip_opts, dl_opts, ignored = effective_options(recipe, consumer, download_overrides)
    if ignored:
        say(f"rebuild: the release's runtime/safety settings are not used (yours are): {', '.join(ignored)}")
    arrays: dict[str, dict[str, bytes]] = {}
    if recipe.with_arrays:
        for split in recipe.splits:
            arrays.update(_shipped_arrays(root, split, {cs.key for cs in sources if cs.split == split}, max_member_bytes))
    with output_lock(str(out), "cnas rebuild"):  # one writer per output folder, once the release has passed its checks
        work = out / WORK
        ledger = _Ledger(work)
        here_ffmpeg = ffmpeg_version()
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
            "unverified": counts["unverified"], "unavailable": counts["unavailable"], "cut_this_run": cut, "skipped_already_rebuilt": skipped,
            "identity": "byte-identical members (sha256) against the release's checksums",
            "ffmpeg_release": recipe.ffmpeg_version, "ffmpeg_here": here_ffmpeg,
            "recipe_settings_not_used": ignored,
        }
        (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        say(f"rebuild: {summary['rebuilt']} rebuilt, {summary['differs']} differ, {summary['unverified']} unverified, "
            f"{summary['unavailable']} unavailable ({cut} cut now, {skipped} already rebuilt); report: {out / REPORT}")
        return summary


def _rebuild_video(video_id, pending: list[ClipSource], work: Path, ledger: _Ledger, norm_opts, clip_opts, dl_opts, arrays,
                   accept_changed: bool, source_dir, release_ffmpeg, here_ffmpeg) -> list[RebuildResult]:
    def result(cs: ClipSource, status: str, reasons: list[str], **kw) -> RebuildResult:
        return RebuildResult(key=cs.key, split=cs.split, video_id=video_id, status=status, reasons=reasons, **kw)

    dl_dir, media_dir = work / "sources" / video_id, work / "media" / video_id
    try:
        try:
            item = _source_item(pending[0].source, source_dir, dl_opts)
            got = download(item, str(dl_dir), dl_opts)
        except StageError as e:
            return [result(cs, "unavailable", [f"source unavailable ({e.reason}): {e.message}"]) for cs in pending]
        sha = sha256_file(got.media_path)
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
        released_json = clip.model_dump_json().encode("utf-8")
        members = {layout.JSON: released_json}
        for suffix in (layout.MP4, layout.WAV):
            members[suffix] = Path(tmp, layout.member_name(cut_key, suffix)).read_bytes()
    for suffix, data in arrays.get(cs.key, {}).items():
        if suffix in ARRAY_MEMBERS:
            members[suffix] = data
    # verified against the release: the json as released, the re-cut media, the shipped arrays
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}
    differing = sorted(k for k, d in digests.items() if cs.member_sha256.get(k) not in (None, d))
    unchecked = sorted(k for k in digests if k not in cs.member_sha256)
    missing = sorted((set(cs.member_sha256) | set(clip.members)) - set(members))
    for m in differing:
        reasons.append(f"{m}: sha256 {digests[m]} differs from the release's {cs.member_sha256[m]}"
                       + (f" (ffmpeg here: {here_ffmpeg!r}; release: {release_ffmpeg!r})" if m == layout.MP4 and here_ffmpeg != release_ffmpeg else ""))
    if unchecked:
        reasons.append(f"the release recorded no sha256 for {', '.join(unchecked)}: nothing to verify against")
    if missing:
        reasons.append(f"not in this release (packaged without --with-arrays): {', '.join(missing)}")
    if set(clip.members) - set(members):
        # the record lists only the members the sample has (cnas validate); the released record was verified above
        trimmed = clip.model_copy(update={"members": [m for m in clip.members if m in members]})
        members[layout.JSON] = trimmed.model_dump_json().encode("utf-8")
        digests[layout.JSON] = hashlib.sha256(members[layout.JSON]).hexdigest()
        reasons.append(f"json: `members` lists only the rebuilt members (the released record, sha256 "
                       f"{hashlib.sha256(released_json).hexdigest()}, also lists {', '.join(sorted(set(clip.members) - set(members)))})")
    ledger.write_members(cs.key, members)
    status = "differs" if changed or differing else "unverified" if unchecked else "rebuilt"
    return result(cs, status, reasons, source_changed=changed, source_sha256=sha, differing_members=differing,
                  missing_members=missing, member_sha256=digests, in_shards=True)


def _fresh_dir(root: Path, name: str) -> Path:
    """``root/name`` emptied (a folder of ``root``'s own; a link there is refused, never followed)."""
    d = safe_join(root, name)
    if d.is_symlink():
        raise UnsafeReleaseError(f"{d}: a symbolic link in the output folder; refused")
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _write_outputs(root: Path, out: Path, recipe: RebuildRecipe, sources: list[ClipSource], results: list[RebuildResult],
                   ledger: _Ledger) -> None:
    """Shards of every clip that was cut (per split, key order), manifests, wids indices, the card,
    schemas and stats of the release, the report and ``SHA256SUMS`` — rewritten on every run."""
    (out / REPORT).write_text("".join(r.model_dump_json() + "\n" for r in results))
    split_of = {cs.key: cs.split for cs in sources}
    record_of = {cs.key: cs.clip for cs in sources}
    for split in recipe.splits:
        d = _fresh_dir(out, split)
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
        (d / SPLIT_MANIFEST).write_text("".join(r.model_dump_json() + "\n" for r in rows))
        counts = Counter(r.shard for r in rows)
        index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": f"{recipe.name}-{recipe.version}-{split}",
                 "shardlist": [{"url": f"{split}/{s}", "nsamples": counts[s], "filesize": (d / s).stat().st_size,
                                "sha256": sha256_file(str(d / s))} for s in sorted(counts)]}
        (out / f"{split}{INDEX_SUFFIX}").write_text(json.dumps(index, indent=2) + "\n")
    for name in (CARD, STATS, RECIPE):
        if (root / name).exists():
            shutil.copy2(root / name, out / name)
    for name in (SCHEMAS_DIR, PLOTS_DIR):
        if (root / name).exists():
            _fresh_dir(out, name).rmdir()
            shutil.copytree(root / name, out / name)
    if (out / STATS).exists():
        write_rebuilt_metadata(out)  # the card's data_files and croissant.json: the shards, not clips.jsonl
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in (SUMS, SUMMARY, LOCK_FILE) and WORK not in p.relative_to(out).parts[:1])
    (out / SUMS).write_text("".join(f"{sha256_file(str(p))}  {p.relative_to(out)}\n" for p in files))
