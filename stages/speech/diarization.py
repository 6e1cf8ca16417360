"""Speaker diarization for the speech stage: pyannote (through whisperX) when a pipeline is given,
else GE2E speaker embeddings of sliding windows clustered with an automatic speaker count; then the
main speaker of the transcript. Ray-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from schemas import Segment, Word

from .options import SAMPLE_RATE

if TYPE_CHECKING:
    from .options import SpeechModels, SpeechOptions



@dataclass
class Turn:
    start_s: float
    end_s: float
    speaker: str
    confidence: float | None


def speech_regions(segments: list[Segment], max_gap_s: float = 0.3) -> list[tuple[float, float]]:
    """Speech spans from word times (more precise than VAD chunks), gaps under ``max_gap_s`` joined."""
    spans = sorted((w.start_s, w.end_s) for s in segments for w in s.words if w.end_s > w.start_s) or sorted(
        (s.start_s, s.end_s) for s in segments
    )
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a - merged[-1][1] <= max_gap_s:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def diarize(models: SpeechModels, audio: np.ndarray, segments: list[Segment]) -> list[Turn]:
    if not segments:
        return []
    if models.diarizer is None:
        return [Turn(0.0, len(audio) / SAMPLE_RATE, "SPEAKER_00", None)]
    if models.diarization_backend.startswith("pyannote"):
        o = models.options
        df = models.diarizer(audio, min_speakers=o.min_speakers, max_speakers=o.max_speakers)
        return [Turn(float(r.start), float(r.end), str(r.speaker), None) for r in df.itertuples()]
    return embedding_turns(models.diarizer, audio, speech_regions(segments, models.options.embedding_merge_gap_s), models.options)


def embedding_turns(encoder, audio: np.ndarray, regions: list[tuple[float, float]], opts: SpeechOptions) -> list[Turn]:
    """Speaker turns from GE2E embeddings of sliding windows, clustered with an automatic count.

    Confidence of a window: how much closer it is to its own speaker's centroid than to the next
    one, mapped to [0, 1] (0.5 = undecided); 1.0 when only one speaker was found.
    """
    windows: list[tuple[float, float]] = []
    for a, b in regions:
        if b - a < opts.embedding_min_region_s:
            continue
        if b - a <= opts.embedding_window_s:
            windows.append((a, b))
            continue
        t = a
        while t + opts.embedding_window_s < b:
            windows.append((t, t + opts.embedding_window_s))
            t += opts.embedding_hop_s
        windows.append((max(a, b - opts.embedding_window_s), b))
    if not windows:
        return []
    emb = np.stack([encoder.embed_utterance(audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]) for a, b in windows])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-9
    if opts.speaker_clustering == "spectral":
        labels = spectral_labels(emb, opts.min_speakers, opts.max_speakers or 8, opts.spectral_prune)
    else:
        labels = cluster_embeddings(emb, opts.speaker_distance_threshold, opts.min_speakers, opts.max_speakers)
    centroids = np.stack([emb[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-9
    sims = emb @ centroids.T
    if len(centroids) > 1:
        own = sims[np.arange(len(emb)), labels]
        other = np.where(np.eye(len(centroids), dtype=bool)[labels], -np.inf, sims).max(axis=1)
        conf = np.clip(0.5 + (own - other), 0.0, 1.0)
    else:
        conf = np.ones(len(emb))
    # rename clusters by first appearance, so SPEAKER_00 speaks first
    order = {k: i for i, k in enumerate(dict.fromkeys(labels.tolist()))}
    return [Turn(a, b, f"SPEAKER_{order[int(k)]:02d}", float(c)) for (a, b), k, c in zip(windows, labels, conf)]


def spectral_labels(emb: np.ndarray, min_k: int | None, max_k: int, prune: float = 0.3) -> np.ndarray:
    """Speaker labels 0..K-1 of unit embeddings by spectral clustering with the eigengap rule.

    Affinity: cosine similarity (negatives 0), each row pruned to its ``prune`` share of strongest
    neighbours, symmetrised (the p-pruning of Park et al., "Auto-tuning spectral clustering for
    speaker diarization", 2019). K is the index of the largest gap between consecutive eigenvalues of
    the normalised Laplacian (K = 1 when the gap after the first is largest: one voice), within
    [``min_k``, ``max_k``]; the rows of the first K eigenvectors are clustered with k-means.
    Same-gender voices differ little in absolute similarity (0.70 vs 0.81 on pyannote's sample), which
    a global distance threshold misses and the graph's structure does not."""
    n = len(emb)
    if n < 4:
        return np.zeros(n, dtype=int)
    sim = np.clip(emb @ emb.T, 0.0, None)
    np.fill_diagonal(sim, 0.0)
    keep = max(2, int(np.ceil(prune * n)))
    pruned = np.zeros_like(sim)
    rows = np.arange(n)[:, None]
    top = np.argsort(sim, axis=1)[:, -keep:]
    pruned[rows, top] = sim[rows, top]
    aff = (pruned + pruned.T) / 2
    deg = aff.sum(axis=1)
    deg[deg == 0] = 1e-9
    inv = 1.0 / np.sqrt(deg)
    lap = np.eye(n) - inv[:, None] * aff * inv[None, :]
    vals, vecs = np.linalg.eigh(lap)
    hi = min(max_k, n - 1)
    lo = max(1, min_k or 1)
    gaps = np.diff(vals[: hi + 1])  # gaps[k-1] = λ_{k+1} - λ_k
    k = lo + int(np.argmax(gaps[lo - 1: hi])) if hi >= lo else lo
    if k == 1:
        return np.zeros(n, dtype=int)
    from sklearn.cluster import KMeans

    x = vecs[:, :k]
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
    return KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(x).astype(int)


def cluster_embeddings(emb: np.ndarray, threshold: float, min_k: int | None, max_k: int | None) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine distance; labels 0..K-1."""
    if len(emb) == 1:
        return np.zeros(1, dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage

    z = linkage(emb, method="average", metric="cosine")
    labels = fcluster(z, t=threshold, criterion="distance") - 1
    k = labels.max() + 1
    if min_k and k < min_k:
        labels = fcluster(z, t=min(min_k, len(emb)), criterion="maxclust") - 1
    elif max_k and k > max_k:
        labels = fcluster(z, t=max_k, criterion="maxclust") - 1
    return labels.astype(int)


def assign_speakers(segments: list[Segment], turns: list[Turn]) -> str | None:
    """Give every word and segment a speaker (largest time overlap, else the nearest turn), the
    segment a confidence (overlap-weighted turn confidence, or the share of its time its speaker
    holds), and return the main speaker (most speech time)."""
    if not turns:
        return None
    talk: dict[str, float] = {}
    for seg in segments:
        votes: dict[str, float] = {}
        confs: dict[str, list[tuple[float, float]]] = {}
        for w in seg.words or [Word(text=seg.text, start_s=seg.start_s, end_s=seg.end_s)]:
            spk, overlaps = _speaker_at(turns, w.start_s, w.end_s)
            w.speaker = spk
            dur = max(w.end_s - w.start_s, 1e-3)
            votes[spk] = votes.get(spk, 0.0) + dur
            for t, ov in overlaps:
                if t.speaker == spk and t.confidence is not None:
                    confs.setdefault(spk, []).append((ov, t.confidence))
        seg.speaker = max(votes, key=votes.get)
        share = votes[seg.speaker] / sum(votes.values())
        weighted = confs.get(seg.speaker)
        if weighted:
            total = sum(ov for ov, _ in weighted)
            seg.speaker_confidence = float(np.clip(share * sum(ov * c for ov, c in weighted) / total, 0, 1)) if total > 0 else share
        else:
            seg.speaker_confidence = float(share)
        spoken = sum(max(w.end_s - w.start_s, 0.0) for w in seg.words) or (seg.end_s - seg.start_s)
        talk[seg.speaker] = talk.get(seg.speaker, 0.0) + spoken
    return max(talk, key=talk.get) if talk else None


def _speaker_at(turns: list[Turn], start: float, end: float) -> tuple[str, list[tuple[Turn, float]]]:
    overlaps = [(t, min(end, t.end_s) - max(start, t.start_s)) for t in turns]
    overlaps = [(t, ov) for t, ov in overlaps if ov > 0]
    if overlaps:
        per: dict[str, float] = {}
        for t, ov in overlaps:
            per[t.speaker] = per.get(t.speaker, 0.0) + ov
        return max(per, key=per.get), overlaps
    mid = (start + end) / 2
    nearest = min(turns, key=lambda t: min(abs(mid - t.start_s), abs(mid - t.end_s)))
    return nearest.speaker, []
