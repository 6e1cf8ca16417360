"""Stage 1 — multimodal emotion binding: a FLAME-motion encoder defines the anchor space; text,
audio and label encoders are pulled next to the motion embedding of the same clip with a
symmetric InfoNCE loss, so any one of them can steer generation later.

The small encoders here are what the ``tiny`` config trains from scratch; pretrained text/audio
backbones plug in through the same interface (an ``nn.Module`` mapping a batch to (B, D)).
"""

from __future__ import annotations

import hashlib
import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainers.audio import PretrainedSpeechEncoder, Spectrogram  # noqa: F401  (re-exported)

from .diffusion import valid_steps


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07, same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between two batches of embeddings (B, D): row i of ``a`` and of ``b``
    are the positive pair, every other row a negative (CLIP's loss). ``same`` (B, B) bool marks
    pairs that are not negatives of each other (two clips of one emotion label share its label and
    template-text embedding: pushing them apart would fight the positive); they are left out of
    both softmaxes."""
    return info_nce_global(a, b, a, b, 0, temperature, same)


def info_nce_global(a: torch.Tensor, b: torch.Tensor, a_all: torch.Tensor, b_all: torch.Tensor, offset: int,
                    temperature: float = 0.07, same: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of this worker's rows ``a``, ``b`` (B, D) against every worker's rows ``a_all``,
    ``b_all`` (N, D; this worker's are rows ``offset … offset+B-1``): the negatives are the whole
    global batch, as CLIP trains across GPUs. ``same`` (B, N): pairs that are not negatives. The mean
    of this loss over workers equals ``info_nce`` of the global batch."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    a_all, b_all = F.normalize(a_all, dim=-1), F.normalize(b_all, dim=-1)
    target = torch.arange(len(a), device=a.device) + offset
    off = None
    if same is not None:
        off = same.to(torch.bool).clone()
        off[torch.arange(len(a), device=a.device), target] = False  # the positive stays
    losses = []
    for q, keys in ((a, b_all), (b, a_all)):
        logits = q @ keys.t() / temperature
        if off is not None:
            logits = logits.masked_fill(off, float("-inf"))
        losses.append(F.cross_entropy(logits, target))
    return (losses[0] + losses[1]) / 2


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every worker's rows of ``x`` (B_r, …) concatenated in rank order, and where this worker's
    start. This worker's rows keep their gradient (``torch.distributed.nn.functional.all_gather``
    sends the others' gradients back to them); batches of different sizes are padded for the
    exchange. Without a process group: ``(x, 0)``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - len(x)
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    parts = all_gather(padded) if x.requires_grad else _gather_plain(padded)
    return torch.cat([p[:k] for p, k in zip(parts, sizes)]), sum(sizes[: dist.get_rank()])


def _gather_plain(x: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts


def text_ids(texts: list[str]) -> torch.Tensor:
    """A 63-bit id per text, so workers can compare texts by exchanging tensors."""
    return torch.tensor([int(hashlib.sha1(t.encode()).hexdigest()[:15], 16) for t in texts], dtype=torch.int64)


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
        """``valid`` (B, T): pool only over time steps whose frames had a FLAME fit (the others are
        zeros in the shards and would pull every clip with gaps towards the neutral face)."""
        h = self.net(motion.transpose(1, 2))  # (B, H, T/2)
        if valid is None:
            return self.proj(h.mean(dim=-1))
        w = valid_steps(valid, 13, 6, h.shape[-1]).to(h.dtype)  # step j sees frames 2j−6 … 2j+6
        w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))  # no valid step: plain mean
        return self.proj((h * w[:, None]).sum(-1) / w.sum(-1)[:, None])


class AudioFrameEncoder(nn.Module):
    """Audio front-end features (B, T, F) → trainable per-frame features (B, T, H); called, the
    mean-pooled projection (B, D) (``dim=None``: per-frame features only, no projection head)."""

    def __init__(self, in_dim: int, hidden: int = 128, dim: int | None = 64):
        super().__init__()
        self.frames = nn.Sequential(nn.Conv1d(in_dim, hidden, 3, padding=1), nn.GELU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU())
        self.proj = nn.Linear(hidden, dim) if dim else None
        self.hidden = hidden

    def frame_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.frames(feats.transpose(1, 2)).transpose(1, 2)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(self.frame_features(feats).mean(dim=1))


# a token: one CJK character (Chinese has no spaces between words) or a run of anything else up to
# whitespace (an English word as ``split`` gives it)
_WORDS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+")


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
            words = _WORDS.findall(t.lower()) or [""]
            ids += [int(hashlib.md5(w.encode()).hexdigest()[:8], 16) % self.buckets for w in words]
        return torch.tensor(ids), torch.tensor(offsets)

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, offsets = self.tokens(texts)
        return self.proj(self.emb(ids.to(self.proj.weight.device), offsets.to(self.proj.weight.device)))


class PretrainedTextEncoder(nn.Module):
    """A Hugging Face text encoder saved on disk (e.g. a sentence-transformers BERT/RoBERTa), loaded by
    path with its tokenizer: mean-pooled last hidden states → projection head (B, D)."""

    def __init__(self, path: str, dim: int = 64, freeze: bool = True):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path)
        self.freeze = freeze
        if freeze:
            self.model.requires_grad_(False).eval()
        self.proj = nn.Sequential(nn.Linear(self.model.config.hidden_size, dim), nn.GELU(), nn.Linear(dim, dim))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.proj[0].weight.device
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
        with torch.set_grad_enabled(not self.freeze and torch.is_grad_enabled()):
            h = self.model(**tok).last_hidden_state
        mask = tok["attention_mask"][..., None].to(h.dtype)
        return self.proj((h * mask).sum(1) / mask.sum(1).clamp(min=1))


class LabelEncoder(nn.Module):
    """(emotion label, intensity) → (B, D)."""

    def __init__(self, num_labels: int = 8, num_intensities: int = 4, dim: int = 64):
        super().__init__()
        self.label = nn.Embedding(num_labels, dim)
        self.intensity = nn.Embedding(num_intensities, dim)

    def forward(self, label: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        return self.label(label) + self.intensity(intensity)


def binding_loss(motion_emb: torch.Tensor, others: dict[str, torch.Tensor], temperature: float = 0.07,
                 same: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of InfoNCE(motion, modality) over the given modalities (``same[modality]``: pairs that
    are not negatives for it), and each term for logging."""
    same = same or {}
    terms = {name: info_nce(motion_emb, emb, temperature, same.get(name)) for name, emb in others.items()}
    return sum(terms.values()), {k: v.item() for k, v in terms.items()}
