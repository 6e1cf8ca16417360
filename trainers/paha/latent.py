"""Latent spaces for trainer 2.

* ``VaeLatent`` — a pretrained image VAE loaded by path (a diffusers ``AutoencoderKL`` folder, e.g.
  the ``vae`` of a Stable Diffusion checkpoint, or ``stabilityai/sd-vae-ft-mse`` downloaded
  beforehand), frozen; latents are multiplied by its ``scaling_factor`` as in Stable Diffusion.
* ``PixelLatent`` — the ``tiny`` config's latent: pixel-unshuffle by ``factor`` (lossless, no
  weights: (3, H, W) → (3·f², H/f, W/f)), so CPU tests can decode exactly what they denoise.

Frames are (N, 3, H, W) in [0, 1]; latents (N, C, H/f, W/f).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelLatent(nn.Module):
    # pixels in [-1, 1] have a standard deviation of roughly 0.25-0.5 in talking-person frames;
    # scaled ×2 the latents are near unit variance, as SD's scaling factor makes VAE latents
    scale = 2.0

    def __init__(self, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.channels = 3 * factor * factor

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(frames * 2 - 1, self.factor) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (F.pixel_shuffle(latents / self.scale, self.factor).clamp(-1, 1) + 1) / 2


class VaeLatent(nn.Module):
    def __init__(self, path: str, batch: int = 8):
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(path).requires_grad_(False).eval()
        self.scale = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.channels = self.vae.config.latent_channels
        self.batch = batch

    def train(self, mode: bool = True):  # frozen: always in eval mode
        return super().train(False)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        out = [self.vae.encode(frames[i: i + self.batch] * 2 - 1).latent_dist.mean for i in range(0, len(frames), self.batch)]
        return torch.cat(out) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = [self.vae.decode(latents[i: i + self.batch] / self.scale).sample for i in range(0, len(latents), self.batch)]
        return (torch.cat(out).clamp(-1, 1) + 1) / 2


def make_latent(vae_path: str | None, factor: int = 4) -> nn.Module:
    return VaeLatent(vae_path) if vae_path else PixelLatent(factor)
