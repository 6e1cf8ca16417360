"""The expression classifier over FLAME motion, shared by the facial trainer's probe
(``trainers/facial/probe.py``: trains it, uses it to judge generated motion) and the ingest's emotion
stage (``stages/emotion.py``: pseudo-labels the clips of an unlabelled corpus with it).

Motion is what the facial model produces per frame: FLAME expression (50) and jaw pose (3),
standardised with statistics stored in the classifier. A saved classifier is ``probe.pt``: the state
dict and a report (labels, window, hidden size, held-out accuracy), loaded with ``weights_only`` so a
file from elsewhere cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from schemas.emotion import EMOTIONS

MOTION_DIM = 53  # FLAME expression 50 + jaw 3


class ExpressionProbe(nn.Module):
    """FLAME motion (B, T, 53) → emotion logits (B, len(EMOTIONS)); ``features`` is the pooled
    representation before the classifier head (the probe's "emotion features")."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(nn.Conv1d(MOTION_DIM, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU())
        self.embed = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU())
        self.head = nn.Linear(hidden, len(EMOTIONS))
        self.register_buffer("mean", torch.zeros(MOTION_DIM))
        self.register_buffer("std", torch.ones(MOTION_DIM))

    def features(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, T, 53) → (B, hidden): mean and spread over time of the convolved, standardised motion."""
        h = self.net(((motion - self.mean) / self.std).transpose(1, 2))
        return self.embed(torch.cat([h.mean(-1), h.std(-1, unbiased=False)], dim=1))

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(motion))


def load_expression_classifier(path: str | Path, device: str = "cpu") -> tuple[ExpressionProbe, dict[str, Any]]:
    """A classifier saved by ``cnas train facial-probe`` (its folder or ``probe.pt``) and its report.
    FileNotFoundError when absent; ValueError when the file holds anything but tensors and plain
    containers, or is not such a classifier."""
    import pickle

    p = Path(path).expanduser()
    p = p / "probe.pt" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no expression classifier at {p} (train one: cnas train facial-probe --data … --out …)")
    try:
        saved = torch.load(p, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{p}: refused to load: it holds pickled Python objects beyond tensors and plain containers "
                         f"({str(e).splitlines()[0][:200]})") from None
    if not isinstance(saved, dict) or "state" not in saved or "hidden" not in saved.get("report", {}):
        raise ValueError(f"{p} is not an expression classifier (no state and report with a hidden size)")
    probe = ExpressionProbe(int(saved["report"]["hidden"])).to(device)
    probe.load_state_dict(saved["state"])
    return probe.eval(), saved["report"]


def motion_windows(motion: np.ndarray, valid: np.ndarray, window: int, hop: int, min_valid: float) -> list[int]:
    """Start frames of the ``window``-frame windows of ``motion`` (T, 53), every ``hop`` frames (the
    last one ending at T), with at least ``min_valid`` of their frames fitted."""
    T = len(motion)
    if T < window:
        return []
    starts = sorted(set(range(0, T - window + 1, max(hop, 1))) | {T - window})
    return [s for s in starts if valid[s: s + window].mean() >= min_valid]


@torch.no_grad()
def classify_motion(probe: ExpressionProbe, motion: np.ndarray, valid: np.ndarray, window: int, hop: int,
                    min_valid: float = 0.9) -> tuple[np.ndarray, int] | None:
    """Mean emotion probabilities (len(EMOTIONS),) over the windows of one sequence, and how many
    windows; None when no window has enough fitted frames."""
    starts = motion_windows(motion, valid, window, hop, min_valid)
    if not starts:
        return None
    device = probe.mean.device
    batch = torch.from_numpy(np.stack([motion[s: s + window] for s in starts]).astype(np.float32)).to(device)
    probs = torch.softmax(probe(batch), dim=-1).mean(0)
    return probs.cpu().numpy().astype(np.float64), len(starts)
