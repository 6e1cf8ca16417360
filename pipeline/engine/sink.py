"""Shard sink: WebDataset tars (``webdataset.ShardWriter``) plus ``manifest.jsonl``.

Samples are written in key order from the clips recorded in the ledger, so the same set of clips
always gives the same shards and the same manifest, however the run was interrupted. Shards are
written to a staging folder (``shards.new`` beside ``shards`` on a local output) and swapped in
whole with a rename; the manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import webdataset as wds

from schemas import ClipRecord, ManifestRow
from schemas import shard as layout

from pipeline.engine.run_folder import RunFolder
from pipeline.engine.workdir import WorkDir



def sample_members(clip: ClipRecord, work: WorkDir) -> dict[str, bytes]:
    """The bytes of every member of a clip's sample."""
    members = {layout.JSON: clip.model_dump_json().encode("utf-8")}
    for suffix in layout.file_members(clip.members):
        with work.fs.open(work.path(*layout.clip_member_parts(clip.video_id, clip.key, suffix)), "rb") as f:
            members[suffix] = f.read()
    return members


def content_digest(clips: list[ClipRecord], work: WorkDir, max_count: int, max_size_mb: float, prefix: str) -> str:
    """What the shards would be built from: the shard settings, every clip record, and the size and
    modification time of every member file (a re-cut clip has a new mtime even under the same key)."""
    h = hashlib.sha256(json.dumps([max_count, max_size_mb, prefix]).encode())
    for clip in clips:
        h.update(clip.model_dump_json().encode())
        for suffix in layout.file_members(clip.members):
            info = work.fs.info(work.path(*layout.clip_member_parts(clip.video_id, clip.key, suffix)))
            h.update(f"{suffix}:{info.get('size')}:{info.get('mtime', info.get('LastModified', ''))}".encode())
    return h.hexdigest()


def _up_to_date(digest: str, out: WorkDir) -> list[ManifestRow] | None:
    """The existing manifest when it was built from exactly this content and its shards are all there."""
    try:
        if not out.exists(RunFolder.DIGEST) or out.read_text(RunFolder.DIGEST).strip() != digest or not out.exists(RunFolder.MANIFEST):
            return None
        rows = RunFolder(out).manifest()
    except (ValueError, OSError):
        return None
    if not all(out.exists(RunFolder.SHARDS, name) for name in {r.shard for r in rows}):
        return None
    return rows


def write_shards(clips: list[ClipRecord], work: WorkDir, out: WorkDir, max_count: int, max_size_mb: float, prefix: str) -> tuple[list[ManifestRow], bool]:
    """Write all ``clips`` into shards under ``out/shards`` and the manifest; returns (rows, rewritten).

    Nothing is rewritten when ``manifest.digest`` says the shards were built from exactly this
    content (same clip records, same member files, same shard settings) and they all exist.
    """
    clips = sorted(clips, key=lambda c: c.key)
    digest = content_digest(clips, work, max_count, max_size_mb, prefix)
    current = _up_to_date(digest, out)
    if current is not None:
        return current, False
    # A local output stages next to its final place (one rename swaps it in, no copy out of the
    # system TMPDIR, which may be small or shared); a remote one stages in a local scratch folder.
    staging = out.path(RunFolder.SHARDS_STAGING) if out.is_local else tempfile.mkdtemp(prefix="cnas-shards-")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    rows: list[ManifestRow] = []
    try:
        pattern = os.path.join(staging, f"{prefix}-%06d.tar")
        # mtime=0 keeps tar headers, and so whole shards, identical across runs.
        with wds.ShardWriter(pattern, maxcount=max_count, maxsize=int(max_size_mb * 1024 * 1024), verbose=0, mtime=0) as writer:
            for clip in clips:
                members = sample_members(clip, work)
                writer.write({"__key__": clip.key, **members})
                rows.append(
                    ManifestRow(
                        key=clip.key,
                        shard=os.path.basename(writer.fname),
                        video_id=clip.video_id,
                        duration_s=clip.end_s - clip.start_s,
                        member_bytes={k: len(v) for k, v in members.items()},
                        member_sha256={k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
                    )
                )
        out.remove(RunFolder.DIGEST)  # a crash during the swap then leaves nothing that claims to be current
        out.remove(RunFolder.MANIFEST)
        _swap_in(staging, out)
        out.write_text("".join(r.model_dump_json() + "\n" for r in rows), RunFolder.MANIFEST)
        out.write_text(digest + "\n", RunFolder.DIGEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows, True


def _swap_in(staging: str, out: WorkDir) -> None:
    """Replace ``out/shards`` by the staged shards; the old set is removed only once the new one is in place."""
    if out.is_local:
        final, old = out.path(RunFolder.SHARDS), out.path(RunFolder.SHARDS_OLD)
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.remove(RunFolder.SHARDS)
        out.fs.put(staging.rstrip("/") + "/", out.path(RunFolder.SHARDS), recursive=True)
