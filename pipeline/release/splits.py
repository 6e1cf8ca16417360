"""Speaker-disjoint splits: which split key a clip has and which split each speaker goes to."""

from __future__ import annotations

import hashlib


from schemas import ClipRecord

from pipeline.engine.config import ReleaseConfig


def speaker_of(clip: ClipRecord, keys: list[str], by_identity: bool = True) -> str:
    """The split key of a clip: its face identity (the same anchor in every episode), else the
    source metadata ``keys`` (e.g. ``speaker``), else the video id."""
    if by_identity and clip.identity:
        return clip.identity
    for k in keys:
        if clip.source_metadata.get(k):
            return str(clip.source_metadata[k])
    return clip.video_id


def split_keys(clips: list[ClipRecord], keys: list[str], by_identity: bool = True) -> dict[str, str]:
    """Clip key → split key: ``speaker_of``, with the speakers of one rebroadcast group (clips
    whose ``curation.duplicate_group`` is the same, kept with ``curate.duplicates=keep``) merged
    into one, so copies of a segment never sit in two splits."""
    own = {c.key: speaker_of(c, keys, by_identity) for c in clips}
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    first_of: dict[str, str] = {}
    for c in clips:
        group = c.curation.duplicate_group if c.curation else None
        if group:
            if group in first_of:
                a, b = find(own[c.key]), find(first_of[group])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                first_of[group] = own[c.key]
    return {k: find(v) for k, v in own.items()}


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

