"""The DDPM noise schedule and DDIM step both trainers use."""

from __future__ import annotations

import math

import torch


class NoiseSchedule:
    """Linear-β DDPM schedule with DDIM sampling (η = 0: deterministic)."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.steps = steps
        # βs given for 1000 steps are scaled to ``steps`` so x_T is pure noise whatever the count
        scale = 1000 / steps
        betas = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(x0.device)[t].view(-1, *[1] * (x0.dim() - 1))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def ddim_timesteps(self, n: int) -> list[int]:
        return torch.linspace(self.steps - 1, 0, n).round().long().tolist()

    def ddim_step(self, x: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int | None) -> torch.Tensor:
        """One deterministic DDIM step from x_t given the predicted x₀."""
        ac = self.alphas_cumprod.to(x.device)
        a_t = ac[t]
        a_prev = ac[t_prev] if t_prev is not None else torch.tensor(1.0, device=x.device)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

    def _a(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a = self.alphas_cumprod.to(x.device)[t]
        return a.view(-1, *[1] * (x.dim() - 1)) if a.dim() else a

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho): a target with unit scale at every noise level."""
        a = self._a(x0, t)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def from_v(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x₀, ε) implied by a v prediction at x_t."""
        a = self._a(x, t)
        return a.sqrt() * x - (1 - a).sqrt() * v, (1 - a).sqrt() * x + a.sqrt() * v

    def target(self, prediction: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The training target of a network that predicts ``prediction`` (eps | v | x0)."""
        if prediction == "eps":
            return noise
        if prediction == "v":
            return self.v_target(x0, noise, t)
        if prediction == "x0":
            return x0
        raise ValueError(f"unknown prediction type {prediction!r}")

    def split(self, prediction: str, x: torch.Tensor, out: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x₀, ε) implied by the network output ``out`` at x_t."""
        a = self._a(x, t)
        if prediction == "eps":
            return (x - (1 - a).sqrt() * out) / a.sqrt(), out
        if prediction == "v":
            return self.from_v(x, out, t)
        if prediction == "x0":
            return out, (x - a.sqrt() * out) / (1 - a).sqrt()
        raise ValueError(f"unknown prediction type {prediction!r}")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (…, dim) of timesteps or positions of any shape (…)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1)[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1).reshape(*t.shape, dim)
