"""Metrics of trainer 1. Every function takes plain arrays, so the same code scores generated and
ground-truth sequences.

* ``lip_vertex_error`` (LVE): per frame the largest **squared** L2 distance over the lip vertices
  between prediction and reference, averaged over frames — as CodeTalker's ``main/cal_metric.py``
  computes "Lip Vertex Error" (``np.max(np.sum(np.square(gt - pred), axis=2), axis=1)``, then the
  mean), which FaceFormer's tables also report. Needs FLAME and the lip vertex indices (``lips`` in
  FLAME's ``FLAME_masks.pkl``).
* ``upper_face_dynamics_deviation`` (FDD, CodeTalker ``main/cal_metric.py``): per upper-face vertex
  the temporal standard deviation of its **squared** displacement from the template, averaged over
  the vertices, for the reference minus for the prediction (signed: positive = the prediction's upper
  face moves less); averaged over sequences by the caller.
* ``emotion_similarity``: mean cosine similarity between emotion features of two sets of sequences.
  ``cnas eval facial`` feeds it the features of an emotion network that is *not* part of the model
  — the expression probe (``probe.py``) — for generated vs ground-truth sequences, the way
  emotion-similarity numbers in the facial-animation literature (arXiv 2506.10007 and the EMOTE
  line of work it compares with) use a separately trained emotion-recognition network. Scoring the
  model's own binding space would measure the model against itself.
* ``diversity``: mean pairwise distance between samples generated for the same input.
* ``envelope_correlation``: Pearson correlation between a motion series (jaw opening) and the
  audio envelope, the test of audio control used with matched vs swapped audio.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from trainers.conditioning import envelope_correlation  # noqa: F401  (shared with trainer 2; M.envelope_correlation)


def lip_vertex_error(pred_vertices: np.ndarray, ref_vertices: np.ndarray, lip_idx: np.ndarray) -> float:
    """(T, V, 3) twice, lip indices → mean over frames of max over lip vertices of the squared L2 error."""
    err = np.square(pred_vertices[:, lip_idx] - ref_vertices[:, lip_idx]).sum(axis=-1)  # (T, L)
    return float(err.max(axis=1).mean())


def upper_face_dynamics_deviation(pred_vertices: np.ndarray, ref_vertices: np.ndarray, template: np.ndarray,
                                  upper_idx: np.ndarray) -> float:
    def motion_std(v):
        return float(np.square(v[:, upper_idx] - template[upper_idx]).sum(axis=-1).std(axis=0).mean())

    return motion_std(ref_vertices) - motion_std(pred_vertices)


def emotion_similarity(motion_embedding: np.ndarray, emotion_embedding: np.ndarray) -> float:
    a = motion_embedding / (np.linalg.norm(motion_embedding, axis=-1, keepdims=True) + 1e-12)
    b = emotion_embedding / (np.linalg.norm(emotion_embedding, axis=-1, keepdims=True) + 1e-12)
    return float((a * b).sum(-1).mean())


def diversity(samples: np.ndarray) -> float:
    """(K, T, ...) samples for one input → mean L2 distance (per frame, averaged) over all pairs."""
    K = len(samples)
    if K < 2:
        raise ValueError("diversity needs at least two samples")
    flat = samples.reshape(K, samples.shape[1], -1)
    d = [np.linalg.norm(flat[i] - flat[j], axis=-1).mean() for i in range(K) for j in range(i + 1, K)]
    return float(np.mean(d))


def load_region_indices(path: str | Path, regions: tuple[str, ...]) -> np.ndarray:
    """Vertex indices of ``regions`` from FLAME's ``FLAME_masks.pkl`` (or an .npy / whitespace text
    file of indices, used for every region)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"vertex index file not found: {p}")
    if p.suffix == ".npy":
        return np.load(p).astype(np.int64).ravel()
    if p.suffix in (".txt", ".csv"):
        return np.loadtxt(p, dtype=np.int64, delimiter="," if p.suffix == ".csv" else None).ravel()
    with open(p, "rb") as f:
        masks = pickle.load(f, encoding="latin1")
    missing = [r for r in regions if r not in masks]
    if missing:
        raise KeyError(f"{p} has no region(s) {missing}; it has {sorted(masks)}")
    return np.unique(np.concatenate([np.asarray(masks[r]).astype(np.int64).ravel() for r in regions]))
