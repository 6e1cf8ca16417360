"""Stage 1 — multimodal emotion binding: a FLAME-motion encoder defines the anchor space; text,
audio and label encoders are pulled next to the motion embedding of the same clip with a
symmetric InfoNCE loss, so any one of them can steer generation later.

The small encoders here are what the ``tiny`` config trains from scratch; pretrained text/audio
backbones plug in through the same interface (an ``nn.Module`` mapping a batch to (B, D)).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE between two batches of embeddings (B, D): row i of ``a`` and of ``b``
    are the positive pair, every other row a negative (CLIP's loss)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.t() / temperature
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


@torch.no_grad()
def recall_at_k(query: torch.Tensor, keys: torch.Tensor, k: int = 1) -> float:
    """Share of queries whose own key (same row) is among the k most similar keys."""
    sims = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()
    topk = sims.topk(min(k, len(keys)), dim=1).indices
    return (topk == torch.arange(len(query), device=query.device)[:, None]).any(dim=1).float().mean().item()


class MotionEncoder(nn.Module):
    """FLAME motion (B, T, 53: 50 expression + 3 jaw) → (B, D): temporal convolutions, mean pool."""

    def __init__(self, motion_dim: int = 53, hidden: int = 128, dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(motion_dim, hidden, 5, padding=2), nn.GELU(),
            nn.Conv1d(hidden, hidden, 5, padding=2, stride=2), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
        )
        self.proj = nn.Linear(hidden, dim)

    def forward(self, motion: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(motion.transpose(1, 2)).mean(dim=-1)
        return self.proj(h)


class AudioEncoder(nn.Module):
    """16 kHz waveform (B, S) → (B, D) via a log-mel-like spectrogram and convolutions. Also gives
    per-frame features (B, T, H) at the motion frame rate for the denoiser's cross-attention."""

    def __init__(self, dim: int = 64, hidden: int = 128, n_fft: int = 640, fps: float = 25.0, sample_rate: int = 16000):
        super().__init__()
        self.hop = int(sample_rate / fps)  # one spectrogram frame per motion frame
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        n_bins = n_fft // 2 + 1
        self.frames = nn.Sequential(nn.Conv1d(n_bins, hidden, 3, padding=1), nn.GELU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU())
        self.proj = nn.Linear(hidden, dim)
        self.hidden = hidden

    def frame_features(self, wave: torch.Tensor, num_frames: int) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True).abs()
        feats = self.frames(torch.log1p(spec))  # (B, H, frames)
        return F.interpolate(feats, size=num_frames, mode="linear", align_corners=False).transpose(1, 2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n = max(1, wave.shape[-1] // self.hop)
        return self.proj(self.frame_features(wave, n).mean(dim=1))


class TextEncoder(nn.Module):
    """Emotion text → (B, D): hashed word embeddings averaged (the tiny config's stand-in for a
    pretrained sentence encoder, which a path in the config replaces)."""

    def __init__(self, dim: int = 64, buckets: int = 4096):
        super().__init__()
        self.buckets = buckets
        self.emb = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            words = t.lower().split() or [""]
            ids += [int(hashlib.md5(w.encode()).hexdigest()[:8], 16) % self.buckets for w in words]
        return torch.tensor(ids), torch.tensor(offsets)

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, offsets = self.tokens(texts)
        return self.proj(self.emb(ids.to(self.proj.weight.device), offsets.to(self.proj.weight.device)))


class LabelEncoder(nn.Module):
    """(emotion label, intensity) → (B, D)."""

    def __init__(self, num_labels: int = 8, num_intensities: int = 4, dim: int = 64):
        super().__init__()
        self.label = nn.Embedding(num_labels, dim)
        self.intensity = nn.Embedding(num_intensities, dim)

    def forward(self, label: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        return self.label(label) + self.intensity(intensity)


def binding_loss(motion_emb: torch.Tensor, others: dict[str, torch.Tensor], temperature: float = 0.07) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of InfoNCE(motion, modality) over the given modalities, and each term for logging."""
    terms = {name: info_nce(motion_emb, emb, temperature) for name, emb in others.items()}
    return sum(terms.values()), {k: v.item() for k, v in terms.items()}
