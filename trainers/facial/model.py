"""Trainer 1's model, assembled from the building blocks in ``binding.py`` and ``diffusion.py``.

Training runs in two phases inside one run (one checkpoint stream, one command):

1. ``BindingPhase`` — the motion encoder (anchor), audio/text/label emotion encoders with
   symmetric InfoNCE to the motion embedding of the same clip, and the motion autoencoder
   (reconstruction + frame-difference loss on frames with a FLAME fit).
2. ``DiffusionPhase`` — the latent denoiser with its content-audio encoder; the phase-1 networks
   are frozen. The emotion condition of a training clip is one of its bound embeddings (label,
   text or its own audio, picked at random per clip) so that any modality can steer at sampling.

Motion is standardised per dimension with statistics measured once before training over
``train.stats_batches`` batches of every worker, latents by their standard deviation measured the same
way at the start of phase 2 (Stable Diffusion's scaling factor); both are buffers saved with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.data import EMOTIONS

from .binding import (AudioFrameEncoder, LabelEncoder, MotionEncoder, PretrainedSpeechEncoder, PretrainedTextEncoder,
                      Spectrogram, TextEncoder, gather_rows, info_nce_global, recall_at_k, text_ids)
from .config import FacialModelConfig
from .diffusion import Denoiser, MotionAutoencoder, NoiseSchedule, diffusion_loss, sample

MOTION_DIM = 53  # FLAME expression 50 + jaw 3
FPS = 25.0
MODALITIES = ("label", "text", "audio")


class BindingPhase(nn.Module):
    def __init__(self, cfg: FacialModelConfig, audio_in: int):
        super().__init__()
        D, H = cfg.emotion_dim, cfg.encoder_hidden
        self.motion = MotionEncoder(MOTION_DIM, H, D)
        self.audio = AudioFrameEncoder(audio_in, cfg.audio_hidden, D)
        self.text = PretrainedTextEncoder(cfg.text_backbone, D, cfg.freeze_backbones) if cfg.text_backbone else TextEncoder(D)
        self.label = LabelEncoder(len(EMOTIONS), 4, D)
        self.autoencoder = MotionAutoencoder(MOTION_DIM, cfg.ae_hidden, cfg.latent_dim)
        self.gather_negatives = False  # set by the training loop when several workers train

    def embed(self, modality: str, *, motion=None, valid=None, audio_feats=None, text=None, label=None,
              intensity=None) -> torch.Tensor:
        """The bound (unit-norm) emotion embedding of one modality (``valid``: motion frames with a fit)."""
        if modality == "motion":
            e = self.motion(motion, valid)
        elif modality == "audio":
            e = self.audio(audio_feats)
        elif modality == "text":
            e = self.text(text)
        elif modality == "label":
            e = self.label(label, intensity.clamp(0, 3))
        else:
            raise ValueError(f"unknown emotion modality {modality!r}")
        return F.normalize(e, dim=-1)

    def forward(self, motion, valid, audio_feats, text, label, intensity, temperature: float, velocity_weight: float,
                jaw_weight: float = 1.0):
        m = self.embed("motion", motion=motion, valid=valid)
        others = {"audio": self.embed("audio", audio_feats=audio_feats), "text": self.embed("text", text=text),
                  "label": self.embed("label", label=label, intensity=intensity)}
        # several workers: the negatives are every worker's clips (``gather_negatives``), not only this batch's
        gather = gather_rows if self.gather_negatives else (lambda x: (x, 0))
        m_all, offset = gather(m)
        # a label (and its template text) is shared by every clip of that emotion: those clips are not
        # negatives of each other for the label and text terms (their audio still differs)
        key = label * 4 + intensity.clamp(0, 3)
        tid = text_ids(text).to(m.device)
        same = {"label": key[:, None] == gather(key)[0][None, :], "text": tid[:, None] == gather(tid)[0][None, :]}
        terms = {f"binding/{k}_nce": info_nce_global(m, e, m_all, gather(e)[0], offset, temperature, same.get(k))
                 for k, e in others.items()}
        recon = self.autoencoder.decode(self.autoencoder.encode(motion))
        # the jaw (the last 3 dims) weighted: unweighted, 50 expression dims (and their unreconstructable
        # frame noise) outweigh the one that speech moves most, and the latent loses the jaw
        dims = torch.ones(MOTION_DIM, device=motion.device, dtype=motion.dtype)
        dims[-3:] = jaw_weight
        w = valid[..., None].to(motion.dtype) * dims
        terms["ae/recon"] = ((recon - motion) ** 2 * w).sum() / (valid.sum() * dims.sum()).clamp(min=1)
        vel_w = w[:, 1:] * valid[:, :-1, None].to(motion.dtype)
        pairs = (valid[:, 1:].to(motion.dtype) * valid[:, :-1].to(motion.dtype)).sum()
        vel = ((recon.diff(dim=1) - motion.diff(dim=1)) ** 2 * vel_w).sum() / (pairs * dims.sum()).clamp(min=1)
        terms["ae/velocity"] = vel
        loss = sum(v for k, v in terms.items() if k != "ae/velocity") + velocity_weight * vel
        with torch.no_grad():
            for k, e in others.items():
                terms[f"binding/r1_motion_{k}"] = torch.tensor(recall_at_k(m, e, 1))
        return loss, terms


class DiffusionPhase(nn.Module):
    def __init__(self, cfg: FacialModelConfig, audio_in: int):
        super().__init__()
        self.content = AudioFrameEncoder(audio_in, cfg.audio_hidden, dim=None)
        self.denoiser = Denoiser(latent=cfg.latent_dim, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                                 audio_dim=cfg.audio_hidden, emotion_dim=cfg.emotion_dim, latent_fps=FPS / 2,
                                 audio_fps=FPS, align_slope=cfg.align_slope)
        self.denoiser.grad_checkpointing = cfg.grad_checkpointing

    def forward(self, z0, audio_feats, emotion, schedule: NoiseSchedule, p_drop_audio: float, p_drop_emotion: float,
                mask: torch.Tensor | None = None, t: torch.Tensor | None = None):
        loss = diffusion_loss(self.denoiser, schedule, z0, self.content.frame_features(audio_feats), emotion,
                              p_drop_audio, p_drop_emotion, mask, t)
        return loss, {"diffusion/loss": loss.detach()}


class FacialModel(nn.Module):
    """Everything trainer 1 learns, plus the normalisation statistics it measured."""

    def __init__(self, cfg: FacialModelConfig):
        super().__init__()
        self.cfg = cfg
        # the speech backbone is shared by both phases, so it stays frozen (``freeze_backbones`` is for the text encoder)
        self.frontend = (PretrainedSpeechEncoder(cfg.audio_backbone, cfg.audio_backbone_layer, freeze=True)
                         if cfg.audio_backbone else Spectrogram(fps=FPS))
        self.binding = BindingPhase(cfg, self.frontend.out_dim)
        self.diffusion = DiffusionPhase(cfg, self.frontend.out_dim)
        self.schedule = NoiseSchedule(cfg.noise_steps)
        self.register_buffer("motion_mean", torch.zeros(MOTION_DIM))
        self.register_buffer("motion_std", torch.ones(MOTION_DIM))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("stats_ready", torch.zeros((), dtype=torch.bool))

    # --- normalisation ---------------------------------------------------------------------
    def normalise(self, motion: torch.Tensor) -> torch.Tensor:
        return (motion - self.motion_mean) / self.motion_std

    def denormalise(self, motion: torch.Tensor) -> torch.Tensor:
        return motion * self.motion_std + self.motion_mean

    @torch.no_grad()
    def set_motion_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension motion statistics of the training data (``trainers/facial/train.measure_stats``)."""
        self.motion_mean.copy_(mean)
        self.motion_std.copy_(std.clamp(min=1e-3))
        self.stats_ready.fill_(True)

    @torch.no_grad()
    def set_latent_scale(self, std: torch.Tensor) -> None:
        """The latent scale: the std of phase-1 latents of fitted motion, measured at the start of phase 2."""
        self.latent_scale.copy_(std.clamp(min=1e-3))

    def encode_motion(self, motion: torch.Tensor) -> torch.Tensor:
        return self.binding.autoencoder.encode(self.normalise(motion)) / self.latent_scale

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.denormalise(self.binding.autoencoder.decode(z * self.latent_scale))

    # --- conditions --------------------------------------------------------------------------
    def audio_features(self, wave: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.frontend(wave, num_frames)

    @torch.no_grad()
    def emotion_embedding(self, *, text: list[str] | None = None, label: torch.Tensor | None = None,
                          intensity: torch.Tensor | None = None, wave: torch.Tensor | None = None,
                          motion: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The bound emotion embedding from exactly one of: text, (label, intensity), a waveform, motion
        (``valid`` (B, T): the motion frames with a FLAME fit; default all)."""
        given = [n for n, v in (("text", text), ("label", label), ("audio", wave), ("motion", motion)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one emotion source (text, label, audio or motion), got {given or 'none'}")
        kind = given[0]
        if kind == "label":
            return self.binding.embed("label", label=label, intensity=intensity if intensity is not None else torch.ones_like(label))
        if kind == "audio":
            n = max(2, int(round(wave.shape[-1] / 16000 * FPS)))
            return self.binding.embed("audio", audio_feats=self.audio_features(wave, n))
        if kind == "motion":
            return self.binding.embed("motion", motion=self.normalise(motion), valid=valid)
        return self.binding.embed("text", text=text)

    @torch.no_grad()
    def mixed_emotion(self, audio_feats, text, label, intensity, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per clip, the bound embedding of one randomly chosen modality (the phase-2 condition)."""
        embs = torch.stack([self.binding.embed("label", label=label, intensity=intensity),
                            self.binding.embed("text", text=text),
                            self.binding.embed("audio", audio_feats=audio_feats)], dim=1)  # (B, 3, D)
        pick = torch.randint(0, len(MODALITIES), (len(embs),), generator=generator).to(embs.device)
        return embs[torch.arange(len(embs), device=embs.device), pick]

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, wave: torch.Tensor, emotion: torch.Tensor, num_frames: int, steps: int = 50,
                 audio_scale: float = 2.0, emotion_scale: float = 1.5, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Motion (B, num_frames, 53) for waveforms (B, S) and bound emotion embeddings (B, D)."""
        if num_frames % 2:
            raise ValueError("num_frames must be even")
        content = self.diffusion.content.frame_features(self.audio_features(wave, num_frames))
        shape = (wave.shape[0], num_frames // 2, self.cfg.latent_dim)
        z = sample(self.diffusion.denoiser, self.schedule, shape, content, emotion, steps, audio_scale, emotion_scale, noise)
        return self.decode_latent(z)
