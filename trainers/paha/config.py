"""Configuration of trainer 2 (PAHA), presets ``tiny`` (CPU tests) and ``base`` (paper scale, GPU).

One config describes both networks; ``train.target`` picks which one a run trains — ``univdm``
(the video diffusion model) or ``pce`` (the regional sync classifiers). They are separate runs
(separate ``run.name``), each resumable, and ``cnas generate paha`` takes both checkpoints.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from schemas.settings import Settings
from trainers.optim import OptimSettings
from trainers.run_config import DataSection, RunSection, ValidationSettings, load_preset_config, with_overrides as _with

from .parts import AUDIO_REGIONS, PARTS, REGIONS


class PahaData(DataSection):
    window_frames: int = Field(16, ge=2, description="frames per training window (motion frames included)")
    image_size: int = Field(512, ge=16, description="square crop side in pixels")
    batch_size: int = Field(1, ge=1, description="per worker")
    shuffle_buffer: int = Field(64, ge=0)
    features: str | None = Field(None, description="a feature store (cnas features paha) with every training clip's VAE "
                                                   "latents and audio features: no frame decoding, no VAE or audio backbone "
                                                   "per step; none: computed on every step")
    reference_bank_clips: int = Field(2, ge=0, description="the reference frame comes from another clip of the same identity "
                                                           "(up to this many clips per identity remembered by each loader "
                                                           "worker); 0 or none met yet: a frame of the clip outside the window")


class PahaModel(Settings):
    vae: str | None = Field(None, description="diffusers AutoencoderKL folder; none: pixel-unshuffle latent (tiny only)")
    latent_factor: int = Field(4, ge=1, description="pixel-unshuffle factor when vae is none")
    channels: list[int] = Field(default_factory=lambda: [32, 64])
    attn_levels: list[int] = Field(default_factory=lambda: [1], description="U-Net levels with video transformers")
    heads: int = 4
    audio_backbone: str | None = Field(None, description="HF speech model folder (wav2vec2/HuBERT/WavLM); none: spectrogram")
    audio_backbone_layer: int | None = None
    audio_dim: int = Field(64, description="audio features after the trainable projection")
    audio_context: int = Field(2, ge=0, description="audio frames on each side a video frame attends to")
    motion_frames: int = Field(2, ge=0, description="clean frames from the previous window (long videos)")
    p_motion: float = Field(0.5, ge=0, le=1, description="share of training windows that start with motion frames")
    noise_steps: int = Field(1000, ge=10)
    prediction: str = Field("x0", pattern=r"^(eps|v|x0)$", description="what UniVDM predicts: ε, v (Salimans & Ho) or x₀")
    p_drop_audio: float = Field(0.1, ge=0, le=1)
    par_lambdas: list[float] = Field(default_factory=lambda: [1.0, 2.0, 2.0, 2.0, 0.0],
                                     description=f"PAR λ per part, in the order {', '.join(PARTS)}")
    init_2d: str | None = Field(None, description="2D weights for UniVDM's spatial layers: a diffusers UNet2DConditionModel "
                                "folder in Stable Diffusion 1.5's layout (e.g. models/stable-diffusion-v1-5/unet, "
                                "block_out_channels = model.channels; see trainers/paha/init2d.py) or a .pt state "
                                "dict in UniVDM's own key names")
    audio_region: str = Field("mouth+hands", description="where UniVDM's audio cross-attention may act (Hallo's masked audio "
                              "attention): frame (everywhere), face, mouth (lower face + mouth box), mouth+hands, "
                              "face+hands — from the window's part boxes in training, the reference's at sampling")
    audio_region_margin: float = Field(0.05, ge=0, le=1, description="the audio region grown by this share of the view "
                                       "side on every side (head motion between the reference and the frames)")
    group_norm: str = Field("video", pattern=r"^(frame|video)$", description="UniVDM's GroupNorm statistics: per frame "
                            "(Stable Diffusion's) or over all frames of a window (AnimateDiff's inflated GroupNorm)")
    pce_regions: list[str] = Field(default_factory=lambda: list(REGIONS))
    pce_crop: int = Field(8, ge=2)
    pce_hidden: int = 64
    grad_checkpointing: bool = Field(False, description="recompute UniVDM's res-blocks and video transformers in the "
                                                         "backward pass (less activation memory, ~30 % more compute)")

    @model_validator(mode="after")
    def _check(self):
        if len(self.par_lambdas) != len(PARTS) or min(self.par_lambdas) < 0:
            raise ValueError(f"model.par_lambdas needs {len(PARTS)} non-negative values ({', '.join(PARTS)})")
        if self.audio_region not in AUDIO_REGIONS:
            raise ValueError(f"model.audio_region must be one of {', '.join(AUDIO_REGIONS)}")
        if any(i >= len(self.channels) for i in self.attn_levels):
            raise ValueError("model.attn_levels refers to a level beyond model.channels")
        return self


class PahaTrain(ValidationSettings, OptimSettings):
    target: str = Field("univdm", pattern=r"^(univdm|pce)$")
    steps: int = Field(100000, ge=0)
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    amp: bool = True
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    pce_min_shift: int = Field(3, ge=1, description="negatives: audio shifted by at least this many frames")
    pce_noise_buckets: int = Field(4, ge=1, description="accuracy is logged per equal share of the timesteps")
    min_init_fraction: float = Field(0.5, ge=0, le=1, description="with model.init_2d: stop when less than this share "
                                     "of UniVDM's parameters was initialised from it (a wrong or mismatched folder)")


class PahaConfig(Settings):
    preset: str | None = None
    data: PahaData = Field(default_factory=PahaData)
    model: PahaModel = Field(default_factory=PahaModel)
    train: PahaTrain = Field(default_factory=PahaTrain)
    run: RunSection = Field(default_factory=lambda: RunSection(name="paha"))

    @model_validator(mode="after")
    def _fits(self):
        if self.data.window_frames + 1 > 64:  # UniVDM's temporal positions cover 64 frames (reference included)
            raise ValueError("data.window_frames must be at most 63")
        if self.model.motion_frames >= self.data.window_frames:
            raise ValueError("model.motion_frames must be smaller than data.window_frames")
        factor = self.model.latent_factor if self.model.vae is None else 8
        if self.data.image_size % (factor * 2 ** (len(self.model.channels) - 1)):
            raise ValueError("data.image_size must divide by the latent factor × 2^(levels-1)")
        return self


#: Model settings added after checkpoints were written, with the value those checkpoints were trained with.
BEFORE_SETTINGS: dict[str, Any] = {"audio_region": "frame", "group_norm": "frame"}


def with_settings_of_before(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored config with ``BEFORE_SETTINGS`` filled in where it predates them, so an
    older checkpoint is rebuilt as it was trained, not with today's defaults."""
    model = config.get("model", {})
    return {**config, "model": {**{k: v for k, v in BEFORE_SETTINGS.items() if k not in model}, **model}}


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": {"window_frames": 6, "image_size": 32, "batch_size": 2, "shuffle_buffer": 8},
        "model": {"latent_factor": 4, "channels": [32, 64], "attn_levels": [0, 1], "heads": 4, "audio_dim": 32,
                  "motion_frames": 2, "noise_steps": 100, "pce_crop": 4, "pce_hidden": 32},
        "train": {"steps": 20, "lr": 1e-3, "checkpoint_every": 10, "log_every": 5, "ema_decay": 0.9, "val_every": 10,
                  "val_batches": 2, "val_timesteps": 4},
        "run": {"name": "paha-tiny", "num_workers": 1, "max_failures": 1},
    },
    # paper scale: SD-VAE latents of 512² frames (64²×4), SD-1.5-like widths, 16-frame windows
    "base": {
        "data": {"window_frames": 16, "image_size": 512, "batch_size": 1, "loader_workers": 4, "shuffle_buffer": 200},
        "model": {"vae": "models/sd-vae-ft-mse", "channels": [320, 640, 1280, 1280], "attn_levels": [1, 2, 3],
                  "heads": 8, "audio_backbone": "models/chinese-hubert-base", "audio_dim": 768, "motion_frames": 4,
                  "noise_steps": 1000, "pce_crop": 16, "pce_hidden": 256, "grad_checkpointing": True},
        "train": {"steps": 100000, "lr": 1e-5, "checkpoint_every": 1000, "log_every": 50, "ema_decay": 0.9999,
                  "warmup_steps": 500, "lr_schedule": "cosine", "grad_accum": 4},
        "run": {"name": "paha-base", "num_workers": 8, "use_gpu": True, "cpus_per_worker": 6},
    },
}


# the base model on one GPU (one 1-GPU node of ray_cluster.yaml, or a workstation): the same
# effective batch as ``base``'s 8 workers × 4 micro-batches through 32 accumulated micro-batches per step
PRESETS["base-1gpu"] = _with(PRESETS["base"], {"train": {"grad_accum": 32}, "run": {"name": "paha-base-1gpu", "num_workers": 1}})


def load_paha_config(config: str | None = "tiny", overrides: list[str] | None = None) -> PahaConfig:
    return load_preset_config(PahaConfig, PRESETS, config, overrides)
