"""Trainer 2's networks with their inputs: the audio front end, the latent space, UniVDM and PCE.

``VideoModel.loss`` is one UniVDM training step's loss (ε, v or x₀ prediction, PAR-weighted, motion frames
and audio dropout); ``ClassifierModel.loss`` one PCE step's (BCE on synchronised vs mismatched
audio over all noise levels, with accuracy per noise bucket).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.audio import PretrainedSpeechEncoder, Spectrogram
from trainers.schedule import NoiseSchedule

from .config import PahaModel
from .latent import make_latent
from .parts import PCE, audio_region_mask, downsample_masks, mismatched_audio, par_loss, par_weights, region_boxes
from .unet import FRAME_MOTION, FRAME_NOISY, FRAME_REF, UniVDM

FPS = 25.0


def make_frontend(cfg: PahaModel) -> nn.Module:
    if cfg.audio_backbone:
        return PretrainedSpeechEncoder(cfg.audio_backbone, cfg.audio_backbone_layer, freeze=True)
    return Spectrogram(fps=FPS)


class VideoModel(nn.Module):
    def __init__(self, cfg: PahaModel):
        super().__init__()
        self.cfg = cfg
        self.frontend = make_frontend(cfg)
        self.latent = make_latent(cfg.vae, cfg.latent_factor)
        self.audio_proj = nn.Sequential(nn.Linear(self.frontend.out_dim, cfg.audio_dim), nn.SiLU(), nn.Linear(cfg.audio_dim, cfg.audio_dim))
        self.unet = UniVDM(self.latent.channels, tuple(cfg.channels), tuple(cfg.attn_levels), cfg.heads, cfg.audio_dim,
                           cfg.audio_context, norm_over_video=cfg.group_norm == "video")
        self.unet.grad_checkpointing = cfg.grad_checkpointing
        self.schedule = NoiseSchedule(cfg.noise_steps)
        self.register_buffer("par_lambdas", torch.tensor(cfg.par_lambdas, dtype=torch.float32))

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) in [0, 1] → (B, T, C, h, w)."""
        B, T = frames.shape[:2]
        z = self.latent.encode(frames.reshape(B * T, *frames.shape[2:]))
        return z.reshape(B, T, *z.shape[1:])

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        B, T = z.shape[:2]
        x = self.latent.decode(z.reshape(B * T, *z.shape[2:]))
        return x.reshape(B, T, *x.shape[1:])

    def audio_mask(self, part_boxes: torch.Tensor | None, size: int) -> torch.Tensor | None:
        """(B, [T,] P, 4) part boxes in view pixels (a window's, or a reference's at sampling) → where
        the audio may act (B, 1, size, size), or None with ``model.audio_region`` = frame."""
        if self.cfg.audio_region == "frame":
            return None
        if part_boxes is None:
            raise ValueError(f"model.audio_region={self.cfg.audio_region} needs the part boxes (the pose stage's)")
        return audio_region_mask(part_boxes, size, self.cfg.audio_region, self.cfg.audio_region_margin)

    def audio_features(self, wave: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, S) 16 kHz → projected per-frame features (B, T, audio_dim)."""
        with torch.no_grad():
            raw = self.frontend(wave, num_frames)
        return self.audio_proj(raw)

    def denoise(self, ref: torch.Tensor, motion: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor,
                audio: torch.Tensor, drop_audio: torch.Tensor | None = None,
                audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The network output (``model.prediction``: ε, v or x₀) for the noisy frames ``x_t`` (B, N, C, h, w) given the reference latent (B, C, h, w), clean
        motion frames (B, M, C, h, w) or None, timesteps (B,), audio (B, M+N, A) for motion + noisy frames
        and where the audio may act (``audio_mask``, from ``audio_region_mask``; None: everywhere)."""
        B, N = x_t.shape[:2]
        M = 0 if motion is None else motion.shape[1]
        parts = [ref[:, None]] + ([motion] if M else []) + [x_t]
        seq = torch.cat(parts, dim=1)
        dev = x_t.device
        types = torch.tensor([FRAME_REF] + [FRAME_MOTION] * M + [FRAME_NOISY] * N, device=dev).expand(B, -1)
        tt = torch.cat([torch.zeros(B, 1 + M, dtype=torch.long, device=dev), t[:, None].expand(B, N)], dim=1)
        audio_seq = torch.cat([torch.zeros_like(audio[:, :1]), audio], dim=1)  # the reference gets the null token
        return self.unet(seq, tt, types, audio_seq, drop_audio, audio_mask)[:, 1 + M:]

    def loss(self, batch: dict[str, torch.Tensor], use_motion: bool, t: torch.Tensor | None = None,
             p_drop_audio: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step's loss; ``t`` (B,) fixes the timesteps and ``p_drop_audio`` the audio
        dropout (validation: its timestep grid, audio always given)."""
        if "latents" in batch:  # a feature store's (cnas features paha): computed once, not per step
            z, zr = batch["latents"], batch["reference_latent"]
        else:
            z = self.encode_frames(batch["video"])
            zr = self.encode_frames(batch["reference"][:, None])[:, 0]
        B, T = z.shape[:2]
        M = self.cfg.motion_frames if use_motion else 0
        audio = (self.audio_proj(batch["audio_features"]) if "audio_features" in batch
                 else self.audio_features(batch["audio"], T))
        if t is None:
            t = torch.randint(0, self.schedule.steps, (B,), device=z.device)
        noise = torch.randn_like(z[:, M:])
        x_t = self.schedule.q_sample(z[:, M:], t, noise)
        drop = torch.rand(B, device=z.device) < (self.cfg.p_drop_audio if p_drop_audio is None else p_drop_audio)
        v = self.denoise(zr, z[:, :M] if M else None, x_t, t, audio, drop, self.audio_mask(batch.get("part_boxes"), batch["part_masks"].shape[-1]))
        target = self.schedule.target(self.cfg.prediction, z[:, M:], noise, t)
        masks = downsample_masks(batch["part_masks"][:, M:], *z.shape[-2:])
        w = par_weights(masks, batch["part_confidences"][:, M:], self.par_lambdas)
        loss = par_loss(v, target, w)
        return loss, {"univdm/loss": loss.detach(), "univdm/mse": F.mse_loss(v, target).detach(),
                      "univdm/par_weight_mean": w.mean().detach()}


class ClassifierModel(nn.Module):
    """PCE with the same audio front end and latent space as the video model.

    ``frontend`` and ``latent`` may be given to share a video model's frozen modules (at sampling,
    one VAE and one speech encoder in memory instead of two)."""

    def __init__(self, cfg: PahaModel, frontend: nn.Module | None = None, latent: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.frontend = frontend if frontend is not None else make_frontend(cfg)
        self.latent = latent if latent is not None else make_latent(cfg.vae, cfg.latent_factor)
        self.pce = PCE(self.latent.channels, self.frontend.out_dim, cfg.pce_crop, cfg.pce_hidden, tuple(cfg.pce_regions))
        self.schedule = NoiseSchedule(cfg.noise_steps)

    @torch.no_grad()
    def raw_audio(self, wave: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.frontend(wave, num_frames)

    def loss(self, batch: dict[str, torch.Tensor], min_shift: int, buckets: int,
             t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One PCE step's loss and accuracies; ``t`` (B,) fixes the timesteps (validation)."""
        if "latents" in batch:  # a feature store's
            z = batch["latents"]
            B, T = z.shape[:2]
            audio = batch["audio_features"]
        else:
            video = batch["video"]
            B, T = video.shape[:2]
            with torch.no_grad():
                z = self.latent.encode(video.reshape(B * T, *video.shape[2:]))
                z = z.reshape(B, T, *z.shape[1:])
            audio = self.raw_audio(batch["audio"], T)
        negative = mismatched_audio(audio, min_shift=min_shift)
        if t is None:
            t = torch.randint(0, self.schedule.steps, (B,), device=z.device)
        z_t = self.schedule.q_sample(z, t, torch.randn_like(z))
        masks = downsample_masks(batch["part_masks"], *z.shape[-2:])
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=z.device)
        bucket = (t * buckets // self.schedule.steps).clamp(max=buckets - 1)
        for region in self.pce.regions:
            boxes, seen = region_boxes(masks, region)
            logits = torch.cat([self.pce(region, z_t, boxes, t, audio), self.pce(region, z_t, boxes, t, negative)])
            target = torch.cat([torch.ones(B), torch.zeros(B)]).to(logits)
            weight = torch.cat([seen, seen]).to(logits)  # a region never seen in the window teaches nothing
            # every worker computes every region (DDP needs the same graph and metric keys on all)
            loss = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / weight.sum().clamp(min=1)
            total = total + loss
            correct = ((logits > 0).float() == target).float()
            nan = torch.tensor(float("nan"), device=logits.device)
            terms[f"pce/{region}_loss"] = loss.detach() if weight.sum() > 0 else nan
            terms[f"pce/{region}_acc"] = correct[weight > 0].mean().detach() if weight.sum() > 0 else nan
            both = torch.cat([bucket, bucket])
            for k in range(buckets):
                sel = (both == k) & (weight > 0)
                # NaN: no sample of this bucket here; the metric mean leaves it out
                terms[f"pce/{region}_acc_t{k}"] = correct[sel].mean().detach() if sel.any() else nan
        terms["pce/loss"] = total.detach()
        return total, terms
