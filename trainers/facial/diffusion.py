"""Stage 2 — latent diffusion over FLAME motion.

* ``MotionAutoencoder``: (B, T, 53) ↔ a temporal latent (B, T/2, C).
* ``Denoiser``: a transformer over latent frames; timestep and bound emotion embedding enter
  through adaptive layer norm (FiLM); audio frame features through **content-aware
  cross-attention** with a time-aligned bias (a latent frame attends mostly to the audio around
  its own time: bias = -slope × |Δt| in seconds, ALiBi-style, as FaceFormer's alignment mask).
* Classifier-free guidance: training drops audio and emotion independently
  (``p_drop_audio``, ``p_drop_emotion``) by replacing them with learned null tokens; sampling
  combines unconditional, audio-only and full predictions with separate scales.
* The network predicts the clean latent x₀ (as MDM and DiffPoseTalk do for motion: it lets
  geometric losses act on the prediction and converges faster than ε on small data); DDIM steps
  use ε implied by the x₀ prediction.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from trainers.optim import checkpointed
from trainers.schedule import NoiseSchedule, timestep_embedding  # noqa: F401  (NoiseSchedule re-exported)


class MotionAutoencoder(nn.Module):
    def __init__(self, motion_dim: int = 53, hidden: int = 128, latent: int = 32):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv1d(motion_dim, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv1d(hidden, latent, 4, stride=2, padding=1))
        self.dec = nn.Sequential(nn.ConvTranspose1d(latent, hidden, 4, stride=2, padding=1), nn.GELU(),
                                 nn.Conv1d(hidden, motion_dim, 3, padding=1))

    def encode(self, motion: torch.Tensor) -> torch.Tensor:  # (B, T, 53) -> (B, T/2, C)
        return self.enc(motion.transpose(1, 2)).transpose(1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, T/2, C) -> (B, T, 53)
        return self.dec(z.transpose(1, 2)).transpose(1, 2)


class DenoiserBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, elementwise_affine=False) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.film = nn.Linear(dim, 6 * dim)  # emotion+timestep -> scale/shift for the three norms
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x, cond, audio, audio_bias):
        s1, b1, s2, b2, s3, b3 = self.film(cond)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + s1) + b1
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x) * (1 + s2) + b2
        x = x + self.cross_attn(h, audio, audio, attn_mask=audio_bias, need_weights=False)[0]
        h = self.norm3(x) * (1 + s3) + b3
        return x + self.mlp(h)


class Denoiser(nn.Module):
    """x₀-prediction over latent motion frames, conditioned on audio frames and an emotion embedding."""

    def __init__(self, latent: int = 32, dim: int = 64, layers: int = 2, heads: int = 4, audio_dim: int = 128,
                 emotion_dim: int = 64, latent_fps: float = 12.5, audio_fps: float = 25.0, align_slope: float = 4.0):
        super().__init__()
        self.heads, self.latent_fps, self.audio_fps, self.align_slope = heads, latent_fps, audio_fps, align_slope
        self.inp = nn.Linear(latent, dim)
        self.out = nn.Linear(dim, latent)
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.emotion_proj = nn.Linear(emotion_dim, dim)
        self.null_audio = nn.Parameter(torch.zeros(1, 1, audio_dim))
        self.null_emotion = nn.Parameter(torch.zeros(1, emotion_dim))
        self.blocks = nn.ModuleList(DenoiserBlock(dim, heads) for _ in range(layers))
        self.grad_checkpointing = False  # model.grad_checkpointing: recompute each block in the backward pass
        self.dim = dim

    def alignment_bias(self, n_latent: int, n_audio: int, device) -> torch.Tensor:
        """(heads·B-free) additive attention bias: -slope × |t_latent − t_audio| (seconds)."""
        tl = torch.arange(n_latent, device=device)[:, None] / self.latent_fps
        ta = torch.arange(n_audio, device=device)[None] / self.audio_fps
        return -self.align_slope * (tl - ta).abs()

    def forward(self, z_t, t, audio_feats, emotion, drop_audio=None, drop_emotion=None):
        B, N, _ = z_t.shape
        if drop_audio is not None:
            audio_feats = torch.where(drop_audio[:, None, None], self.null_audio.expand_as(audio_feats), audio_feats)
        if drop_emotion is not None:
            emotion = torch.where(drop_emotion[:, None], self.null_emotion.expand_as(emotion), emotion)
        cond = timestep_embedding(t, self.dim) + self.emotion_proj(emotion)
        audio = self.audio_proj(audio_feats)
        bias = self.alignment_bias(N, audio.shape[1], z_t.device)
        # sinusoidal frame positions: self-attention alone cannot tell the frames apart
        pos = timestep_embedding(torch.arange(N, device=z_t.device), self.dim)
        x = self.inp(z_t) + pos[None]
        for block in self.blocks:
            x = checkpointed(block, x, cond, audio, bias, enabled=self.grad_checkpointing)
        return self.out(x)


def valid_steps(valid: torch.Tensor, kernel: int, padding: int, n: int | None = None) -> torch.Tensor:
    """Frame validity (B, T) → validity of the stride-2 steps of a network whose step i sees frames
    ``2i − padding … 2i − padding + kernel − 1`` (B, n): a step counts only when every frame it sees
    had a FLAME fit (frames beyond the clip's ends are the network's zero padding, not gaps)."""
    pooled = -F.max_pool1d(-valid.float()[:, None], kernel, 2, padding=padding)[:, 0]
    if n is not None and pooled.shape[1] != n:
        pooled = F.interpolate(pooled[:, None], size=n, mode="nearest")[:, 0]
    return pooled > 0.5


def latent_valid(valid: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Which latent frames of ``MotionAutoencoder.encode`` depend only on fitted motion frames
    (its receptive field: frames 2i−2 … 2i+3)."""
    return valid_steps(valid, 6, 2, n)


def diffusion_loss(denoiser: Denoiser, schedule: NoiseSchedule, z0, audio_feats, emotion, p_drop_audio=0.1, p_drop_emotion=0.1,
                   mask: torch.Tensor | None = None, t: torch.Tensor | None = None):
    """DDPM loss on the x₀ prediction, with independent condition dropout for classifier-free guidance.

    ``mask`` (B, N) keeps the loss to latent frames whose motion frames had a FLAME fit: frames
    without one are zeros in the shards, and a model trained on them learns to snap to them.
    ``t`` (B,): the timesteps (validation's fixed grid); default uniformly random."""
    B = z0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.steps, (B,), device=z0.device)
    noise = torch.randn_like(z0)
    drop_a = torch.rand(B, device=z0.device) < p_drop_audio
    drop_e = torch.rand(B, device=z0.device) < p_drop_emotion
    pred = denoiser(schedule.q_sample(z0, t, noise), t, audio_feats, emotion, drop_a, drop_e)
    if mask is None:
        return F.mse_loss(pred, z0)
    w = mask[..., None].to(pred.dtype)
    # an all-invalid batch gives 0 through the same graph (DDP needs every worker's graph alike)
    return ((pred - z0) ** 2 * w).sum() / (w.sum() * z0.shape[-1]).clamp(min=1)


@torch.no_grad()
def sample(denoiser: Denoiser, schedule: NoiseSchedule, shape, audio_feats, emotion, steps: int = 50,
           audio_scale: float = 2.0, emotion_scale: float = 1.5, noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM with two-condition classifier-free guidance on the x₀ prediction:
    x̂ = x̂(∅,∅) + s_a·(x̂(a,∅) − x̂(∅,∅)) + s_e·(x̂(a,e) − x̂(a,∅)). Both scales 0 → unconditional."""
    x = torch.randn(shape, device=audio_feats.device) if noise is None else noise.clone()
    B = shape[0]
    keep, drop = torch.zeros(B, dtype=torch.bool, device=x.device), torch.ones(B, dtype=torch.bool, device=x.device)
    ts = schedule.ddim_timesteps(steps)
    for i, t in enumerate(ts):
        tt = torch.full((B,), t, device=x.device, dtype=torch.long)
        x0_u = denoiser(x, tt, audio_feats, emotion, drop, drop)
        x0 = x0_u
        if audio_scale or emotion_scale:
            x0_a = denoiser(x, tt, audio_feats, emotion, keep, drop)
            x0_ae = denoiser(x, tt, audio_feats, emotion, keep, keep)
            x0 = x0_u + audio_scale * (x0_a - x0_u) + emotion_scale * (x0_ae - x0_a)
        x = schedule.ddim_step(x, x0, t, ts[i + 1] if i + 1 < len(ts) else None)
    return x
