"""An expression probe: an emotion classifier over FLAME motion windows, trained on its own
(``cnas train facial-probe``) on labelled held-out sequences, so that it can judge the facial
model's output without sharing any of its parts.

    cnas train facial-probe --data release/test.index.json --out runs/probe --window 24

The probe sees what the generator produces — expression (50) and jaw (3) per frame — standardised
with its own statistics, and nothing of the generator's binding space. ``cnas eval facial --probe``
uses it for label-control accuracy (guided vs unguided) and for the emotion-feature similarity
between generated and ground-truth sequences.

Its own accuracy is measured on clips it did not train on: ``--val-data`` when given, otherwise
every fifth clip by a hash of its key (``probe.json`` records which). ``probe.json`` also lists a digest
of every clip the probe trained on, and ``cnas eval facial --probe`` refuses to judge clips the probe
has seen: train it on another split (``val``) or on a labelled corpus (``cnas adapt mead``) than the
one evaluated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geometry.expression import MOTION_DIM, ExpressionProbe, load_expression_classifier
from trainers.data import EMOTIONS, LoaderConfig, make_loader

log = logging.getLogger(__name__)


def _held_out(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 5 == 0


def clip_digest(key: str) -> str:
    """What ``probe.json`` records of a training clip: 16 hex digits of the SHA-1 of its key."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def overlap(report: dict[str, Any], keys: list[str]) -> list[str] | None:
    """The clips among ``keys`` the probe trained on; None for a probe saved before the list existed."""
    trained = report.get("train_clips")
    if trained is None:
        return None
    seen = set(trained)
    return [k for k in keys if clip_digest(k) in seen]


def load_windows(urls: str | list[str], window: int, passes: int, min_valid_frames: float = 0.9) -> dict[str, list]:
    """``passes`` random windows per labelled clip of ``urls`` (facial view): motion, label, clip key."""
    out: dict[str, list] = {"motion": [], "label": [], "key": []}
    for epoch in range(passes):
        cfg = LoaderConfig(urls=urls, view="facial", window_frames=window, random_window=True, seed=7,
                           min_valid_frames=min_valid_frames, default_emotion="neutral",
                           min_emotion_confidence=2.0)  # human labels only: never its own kind's pseudo-labels
        for ex in make_loader(cfg, epoch=epoch):
            out["motion"].append(ex["motion"])
            out["label"].append(int(ex["emotion_label"]))
            out["key"].append(ex["__key__"])
    return out


def _accuracy(probe: ExpressionProbe, motion: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((probe(motion).argmax(-1) == labels).float().mean()) if len(labels) else float("nan")


def train_probe(urls: str | list[str], window: int, val_urls: str | list[str] | None = None, steps: int = 400,
                batch_size: int = 32, lr: float = 2e-3, hidden: int = 64, passes: int = 8, seed: int = 0) -> tuple[ExpressionProbe, dict[str, Any]]:
    """Train a probe on the labelled clips of ``urls``; (probe, report with its held-out accuracy)."""
    data = load_windows(urls, window, passes)
    if not data["motion"]:
        raise ValueError(f"no {window}-frame window with FLAME parameters in {urls!r}")
    motion, labels = torch.stack(data["motion"]), torch.tensor(data["label"])
    if val_urls:
        val = load_windows(val_urls, window, 1)
        train_idx = torch.arange(len(labels))
        val_motion, val_labels = (torch.stack(val["motion"]), torch.tensor(val["label"])) if val["motion"] else (motion[:0], labels[:0])
        held = "val_urls"
    else:
        test = torch.tensor([_held_out(k) for k in data["key"]])
        train_idx = torch.nonzero(~test).flatten()
        val_motion, val_labels = motion[test], labels[test]
        held = "every fifth clip by key hash"
    present = sorted(set(labels[train_idx].tolist()))
    if len(present) < 2:
        raise ValueError(f"the probe needs clips of at least two emotions; {urls!r} has {[EMOTIONS[i] for i in present]}")
    torch.manual_seed(seed)
    probe = ExpressionProbe(hidden)
    frames = motion[train_idx].reshape(-1, MOTION_DIM)
    probe.mean.copy_(frames.mean(0))
    probe.std.copy_(frames.std(0).clamp(min=1e-3))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = train_idx[torch.randint(0, len(train_idx), (min(batch_size, len(train_idx)),), generator=g)]
        loss = F.cross_entropy(probe(motion[pick]), labels[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probe.eval()
    report = {"window_frames": window, "labels": [EMOTIONS[i] for i in present], "chance": 1 / len(present),
              "train_windows": len(train_idx), "train_accuracy": _accuracy(probe, motion[train_idx], labels[train_idx]),
              "held_out": held, "held_out_windows": len(val_labels), "held_out_accuracy": _accuracy(probe, val_motion, val_labels),
              "data": urls if isinstance(urls, str) else list(urls), "steps": steps, "hidden": hidden,
              "train_clips": sorted({clip_digest(data["key"][i]) for i in train_idx.tolist()})}
    return probe, report


def save_probe(probe: ExpressionProbe, report: dict[str, Any], out: str | Path) -> Path:
    """``<out>/probe.pt`` (weights + report) and ``<out>/probe.json`` (the report)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state": probe.state_dict(), "report": report}, out / "probe.pt")
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    return out / "probe.pt"


def load_probe(path: str | Path, device: str = "cpu") -> tuple[ExpressionProbe, dict[str, Any]]:
    """A probe saved by ``save_probe`` (its folder or ``probe.pt``) and its report."""
    return load_expression_classifier(path, device)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows of two (N, D) arrays."""
    a = a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-12)
    b = b / (np.linalg.norm(b, axis=-1, keepdims=True) + 1e-12)
    return float((a * b).sum(-1).mean())
