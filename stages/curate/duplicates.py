"""Rebroadcast groups across videos and runs, from the clips' fingerprints.

Candidates come from an inverted index of the audio sub-fingerprints (Haitsma & Kalker's lookup:
copies share many sub-fingerprints exactly; silence-like values 0 and 2³²−1 are not indexed);
each candidate pair is then checked by ``fingerprint.same_content``. Groups are the connected
components. In each group the clip seen first is kept: one registered by an earlier run, else the
earliest by video id and start time.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from schemas.curation import ClipFingerprint

from .fingerprint import decode_audio, same_content

#: Exact sub-fingerprint hits two clips must share to be compared at all.
MIN_HITS = 3


@dataclass
class Fingerprinted:
    """A clip to group: a name unique among the items (the clip key), an order key (earlier = kept)
    and its fingerprint."""

    uid: str
    order: tuple
    fingerprint: ClipFingerprint
    earlier_run: bool = False


@dataclass
class Groups:
    """The outcome: group id (the kept clip's name) per clip name, only for clips in a group of two
    or more, and per other member the name of the clip kept for it."""

    group_of: dict[str, str] = field(default_factory=dict)
    kept_for: dict[str, str] = field(default_factory=dict)
    pairs: list[tuple[str, str, float, float | None]] = field(default_factory=list)


def candidate_pairs(items: list[Fingerprinted]) -> set[tuple[int, int]]:
    """Index pairs that share at least ``MIN_HITS`` audio sub-fingerprints."""
    index: dict[int, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        for v in set(decode_audio(it.fingerprint.audio).tolist()):
            if v not in (0, 0xFFFFFFFF):
                index[v].append(i)
    hits: Counter = Counter()
    for members in index.values():
        if len(members) > 1 and len(members) <= 50:  # a value in very many clips says nothing
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    hits[(members[a], members[b])] += 1
    return {p for p, n in hits.items() if n >= MIN_HITS and not (items[p[0]].earlier_run and items[p[1]].earlier_run)}


def group(items: list[Fingerprinted], max_ber: float, max_hamming: int, min_overlap: float) -> Groups:
    """Connected components of the confirmed copies; the first of each (``earlier_run``, then
    ``order``) is kept."""
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    out = Groups()
    for a, b in sorted(candidate_pairs(items)):
        same, ber, dist = same_content(items[a].fingerprint, items[b].fingerprint, max_ber, max_hamming, min_overlap)
        if same:
            parent[find(a)] = find(b)
            out.pairs.append((items[a].uid, items[b].uid, round(ber, 4), dist))
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        members[find(i)].append(i)
    for idx in members.values():
        if len(idx) < 2:
            continue
        first = min(idx, key=lambda i: (not items[i].earlier_run, items[i].order))
        gid = items[first].uid
        for i in idx:
            out.group_of[items[i].uid] = gid
            if i != first:
                out.kept_for[items[i].uid] = items[first].uid
    return out


def audio_length_s(fp: ClipFingerprint) -> float:
    return float(len(decode_audio(fp.audio)) * fp.audio_hop_s) if fp.audio else 0.0

