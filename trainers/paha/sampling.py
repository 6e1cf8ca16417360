"""Sampling for trainer 2: DDIM with audio classifier-free guidance plus PCE classifier guidance.

Classifier guidance. The PCE classifier of region r gives log p_r(sync | x_t, audio, t); its
gradient with respect to the noisy latents only reaches the pixels of r's box (the classifier sees
a RoIAlign crop), so each classifier edits its own region. The predicted clean latent is moved
along it — ``x̂₀ ← x̂₀ + s·std(x̂₀)·g/rms(g)`` (rms over the region) — before the DDIM step. This
is Dhariwal & Nichol's guidance written on x̂₀ rather than on ε̂ (their ε-form scales the step by
σ_t²/√ᾱ_t, which vanishes at the last steps where an x₀-predicting model fixes the details), with
the gradient normalised so one ``guidance_scale`` (a share of x̂₀'s spread, default 0.05) fits any
classifier.

* ``sg`` — sequential guidance: one region's classifier per step, cycling through the regions
  (mouth, hands, mouth, …): the cost of one classifier gradient per step.
* ``dg`` — differential guidance: every region's classifier at every step; the guided prediction
  is combined with the unguided one through their difference Δ = x̂₀ᵍ − x̂₀ᵘ, capped to a trust
  region ``x̂₀ = x̂₀ᵘ + min(1, ρ‖x̂₀ᵘ‖/‖Δ‖)·Δ`` (ρ = ``dg_max_ratio``, default 0.2), so strong
  classifier gradients cannot pull frames off the model's manifold — quality first.
* ``none`` — classifier-free guidance on audio only.

Audio classifier-free guidance, ``v_u + s·(v_a − v_u)``, is applied inside the audio region of a model
trained with one (``model.audio_region``; the mask pooled to latent resolution); outside it the
prediction is the audio-conditioned one as it is (scale 1). The difference v_a − v_u outside the
region is only what the network spreads from the region (convolutions, normalisation, attention):
no signal the audio should drive there, and extrapolating it ×s made torso and background follow the
loudness (issue 30 item 9).

Long videos are generated window by window; each window after the first starts with the last
``motion_frames`` latents of the previous one as clean motion frames (as in training).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .model import ClassifierModel, VideoModel

GUIDANCE = ("none", "sg", "dg")


def classifier_grad(pce: ClassifierModel, region: str, x: torch.Tensor, boxes: torch.Tensor, t: int,
                    raw_audio: torch.Tensor) -> torch.Tensor:
    """∇ₓ log σ(logit) of region ``region``'s classifier at timestep ``t`` (summed over the batch)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        logp = torch.nn.functional.logsigmoid(pce.pce(region, x, boxes, tt, raw_audio)).sum()
        return torch.autograd.grad(logp, x)[0]


def guidance_step(grad: torch.Tensor, x0: torch.Tensor, scale: float) -> torch.Tensor:
    """A step of ``scale`` × (standard deviation of x₀) along ``grad``, whose RMS is measured over
    the elements it touches (its region): the scale means the same for any classifier and region."""
    flat = grad.flatten(1)
    touched = (flat != 0).sum(dim=1).clamp(min=1)
    rms = (flat.pow(2).sum(dim=1) / touched).sqrt().clamp(min=1e-12)
    shape = (-1,) + (1,) * (grad.dim() - 1)
    return scale * x0.flatten(1).std(dim=1).view(shape) * grad / rms.view(shape)


@torch.no_grad()
def sample_window(model: VideoModel, ref: torch.Tensor, audio: torch.Tensor, num_frames: int, steps: int = 25,
                  audio_scale: float = 3.5, motion: torch.Tensor | None = None, guidance: str = "none",
                  pce: ClassifierModel | None = None, raw_audio: torch.Tensor | None = None,
                  boxes: dict[str, torch.Tensor] | None = None, guidance_scale: float = 0.05, dg_max_ratio: float = 0.2,
                  noise: torch.Tensor | None = None, clip_x0: float | None = None,
                  audio_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Latents (B, num_frames, C, h, w) for one window. ``audio`` (B, M+num_frames, A) are the video
    model's features, ``raw_audio`` the classifier's (B, M+num_frames, F) (guidance only), ``audio_mask``
    where the audio may act (``VideoModel.audio_mask`` of the reference's part boxes)."""
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance must be one of {GUIDANCE}, got {guidance!r}")
    if guidance != "none" and (pce is None or raw_audio is None or not boxes):
        raise ValueError(f"guidance {guidance!r} needs the PCE classifiers (a trained `train.target=pce` checkpoint)")
    if audio_mask is None and model.cfg.audio_region != "frame":
        raise ValueError(f"the model was trained with model.audio_region={model.cfg.audio_region}: sampling needs its "
                         "audio_mask (VideoModel.audio_mask of the reference's part boxes)")
    B, C, h, w = ref.shape
    M = 0 if motion is None else motion.shape[1]
    x = torch.randn((B, num_frames, C, h, w), device=ref.device) if noise is None else noise.clone()
    sched = model.schedule
    ts = sched.ddim_timesteps(steps)
    keep = torch.zeros(B, dtype=torch.bool, device=ref.device)
    regions = [r for r in pce.pce.regions if r in boxes] if pce is not None and boxes else []  # regions with a box
    # audio guidance acts where the audio may (the audio region at latent resolution; scale 1 elsewhere)
    gain = 1.0 if audio_mask is None else 1.0 + (audio_scale - 1.0) * F.adaptive_avg_pool2d(audio_mask.float(), (h, w))[:, None]

    def clf_grad(region: str, t: int, audio_feats: torch.Tensor) -> torch.Tensor:
        # the classifier sees the whole window: motion frames (clean, known) + the noisy frames
        full = torch.cat([motion, x], dim=1) if M else x
        return classifier_grad(pce, region, full, boxes[region], t, audio_feats)[:, M:]

    for i, t in enumerate(ts):
        tt = torch.full((B,), t, device=ref.device, dtype=torch.long)
        v = model.denoise(ref, motion, x, tt, audio, keep, audio_mask)
        if audio_scale != 1.0:
            v_u = model.denoise(ref, motion, x, tt, audio, ~keep, audio_mask)
            v = v_u + (audio_scale if audio_mask is None else gain) * (v - v_u)
        x0, _ = sched.split(model.cfg.prediction, x, v, t)
        if guidance == "sg":
            x0 = x0 + guidance_step(clf_grad(regions[i % len(regions)], t, raw_audio), x0, guidance_scale)
        elif guidance == "dg":
            diff = sum(guidance_step(clf_grad(r, t, raw_audio), x0, guidance_scale) for r in regions)
            cap = dg_max_ratio * x0.flatten(1).norm(dim=1) / diff.flatten(1).norm(dim=1).clamp(min=1e-12)
            x0 = x0 + diff * cap.clamp(max=1.0).view(-1, 1, 1, 1, 1)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        x = sched.ddim_step(x, x0, t, ts[i + 1] if i + 1 < len(ts) else None)
    return x


@torch.no_grad()
def sample_video(model: VideoModel, ref_latent: torch.Tensor, audio: torch.Tensor, window: int,
                 raw_audio: torch.Tensor | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None, **kw) -> torch.Tensor:
    """Latents (B, T, C, h, w) for audio features of T frames, in windows chained by motion frames."""
    B, T = audio.shape[:2]
    M = model.cfg.motion_frames
    g = torch.Generator().manual_seed(seed)
    C, h, w = ref_latent.shape[1:]
    out: list[torch.Tensor] = []
    done = 0
    while done < T:
        motion = torch.cat(out, dim=1)[:, -M:] if (out and M) else None
        m = 0 if motion is None else motion.shape[1]
        n = min(window - m, T - done)
        sl = slice(done - m, done + n)
        noise = torch.randn((B, n, C, h, w), generator=g).to(ref_latent.device)  # CPU generator: same noise on any device
        x = sample_window(model, ref_latent, audio[:, sl], n, motion=motion, noise=noise,
                          raw_audio=None if raw_audio is None else raw_audio[:, sl], **kw)
        out.append(x)
        done += n
        if progress:
            progress(done, T)
    return torch.cat(out, dim=1)
