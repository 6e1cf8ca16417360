"""Run-wide rebroadcast groups: the curate stage's clip fingerprints → duplicate groups across the
run's videos and earlier runs into the same output folder (``fingerprints.jsonl``, continued by
later runs). With ``curate.duplicates=drop`` only the first clip of a group goes to the shards."""

from __future__ import annotations

from schemas import ClipRecord, FingerprintEntry
from stages.curate import CurateOptions, Fingerprinted, group

from pipeline.engine.run_folder import RunFolder
from pipeline.engine.workdir import WorkDir


def load_fingerprints(out: WorkDir, path: str | None = None) -> list[FingerprintEntry]:
    """The registry to continue: ``path`` if given, else this output folder's own, else none."""
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    elif out.exists(RunFolder.FINGERPRINTS):
        text = out.read_text(RunFolder.FINGERPRINTS)
    else:
        return []
    return [FingerprintEntry.model_validate_json(line) for line in text.splitlines() if line.strip()]


def group_duplicates(clips: list[ClipRecord], out: WorkDir, opts: CurateOptions) -> tuple[list[ClipRecord], list[ClipRecord], list[FingerprintEntry]]:
    """Mark every clip that has a copy (in this run or the registry) with its ``duplicate_group``
    and ``duplicate_of``; returns (clips to write, clips dropped as copies, the updated registry).
    Clips are named by their keys (unique in an output folder; the same source listed twice under
    two ids gives two keys but one ``clip_uid``). A registry entry with this run's key and uid is
    this clip from an earlier attempt, not a copy."""
    registry = load_fingerprints(out)
    ours = {(c.key, c.clip_uid) for c in clips}
    earlier = [e for e in registry if (e.key, e.clip_uid) not in ours]
    items = [Fingerprinted(e.key, ("", e.video_id, e.start_s), e.fingerprint, earlier_run=True) for e in earlier]
    items += [Fingerprinted(c.key, (c.video_id, c.start_s), c.curation.fingerprint)
              for c in clips if c.curation and c.curation.fingerprint]
    groups = group(items, opts.max_audio_ber, opts.max_video_hamming, opts.min_overlap)
    members: dict[str, list[str]] = {}
    for uid, gid in groups.group_of.items():
        members.setdefault(gid, []).append(uid)
    keep, dropped = [], []
    for c in clips:
        gid = groups.group_of.get(c.key)
        if gid and c.curation:
            c.curation.duplicate_group = gid
            c.curation.duplicate_of = sorted(k for k in members[gid] if k != c.key)
        (dropped if opts.duplicates == "drop" and c.key in groups.kept_for else keep).append(c)
    kept_entries = [FingerprintEntry(clip_uid=c.clip_uid, key=c.key, video_id=c.video_id, start_s=c.start_s, end_s=c.end_s,
                                     fingerprint=c.curation.fingerprint)
                    for c in keep if c.curation and c.curation.fingerprint]
    return keep, dropped, earlier + kept_entries


def save_fingerprints(entries: list[FingerprintEntry], out: WorkDir) -> None:
    """Write ``out/fingerprints.jsonl`` (atomically), after the shards, like the identity registry."""
    out.write_text("".join(e.to_json() + "\n" for e in entries), RunFolder.FINGERPRINTS)
