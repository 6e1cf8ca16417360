"""Configuration of trainer 1, with the two presets ``tiny`` (CPU tests, seconds per step) and
``base`` (the paper-scale model for GPUs).

    cnas train facial --config tiny --set data.urls=release/train.index.json
    cnas train facial --config my.yaml          # a YAML file; ``preset: base`` in it starts from base
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.settings import Settings
from trainers.optim import OptimSettings
from trainers.run_config import DataSection, RunSection, ValidationSettings, load_preset_config, with_overrides as _with


class FacialData(DataSection):
    window_frames: int = Field(50, ge=8, description="frames per training window at 25 fps (even: the latent halves it)")
    default_emotion: str = "neutral"
    min_valid_frames: float = Field(0.9, ge=0, le=1, description="drop windows where fewer frames have a FLAME fit")
    min_emotion_confidence: float = Field(0.6, ge=0, le=1.01, description="a clip without a human label (source metadata "
                                          "emotion) trains with its emotion-stage pseudo-label when the estimate's confidence "
                                          "reaches this, else with default_emotion; 1.01: never")
    emotion_text_language: Literal["auto", "en", "zh"] = Field("auto", description="language of the template emotion text: "
                                                                "auto = the clip's (zh… Chinese, else English)")

    @model_validator(mode="after")
    def _even(self):
        if self.window_frames % 2:
            raise ValueError("data.window_frames must be even (the motion autoencoder halves the frame rate)")
        return self


class FacialModelConfig(Settings):
    emotion_dim: int = Field(64, ge=8, description="width of the bound emotion space")
    encoder_hidden: int = 128
    latent_dim: int = 32
    ae_hidden: int = 128
    dim: int = Field(64, description="denoiser width")
    layers: int = 2
    heads: int = 4
    audio_hidden: int = 128
    audio_backbone: str | None = Field(None, description="HF speech model folder (wav2vec2/HuBERT/WavLM); none: built-in spectrogram")
    audio_backbone_layer: int | None = None
    text_backbone: str | None = Field(None, description="HF text encoder folder with tokenizer; none: built-in hashed words")
    freeze_backbones: bool = Field(True, description="freeze the text backbone (the speech backbone is always frozen)")
    grad_checkpointing: bool = Field(False, description="recompute the denoiser blocks' activations in the backward "
                                                         "pass (less memory, ~30 % more compute)")
    noise_steps: int = Field(1000, ge=10)
    align_slope: float = Field(20.0, ge=0, description="cross-attention bias per second of motion/audio offset (20: −1.6 "
                                                         "one latent frame away; at 4 the jaw followed audio smeared over "
                                                         "±0.5 s and lost real speech's syllables, docs/BENCHMARKS.md)")
    p_drop_audio: float = Field(0.1, ge=0, le=1)
    p_drop_emotion: float = Field(0.1, ge=0, le=1)


class FacialTrain(ValidationSettings, OptimSettings):
    binding_steps: int = Field(2000, ge=0, description="phase 1: emotion binding + motion autoencoder")
    diffusion_steps: int = Field(20000, ge=0, description="phase 2: latent denoiser (binding and autoencoder frozen)")
    lr: float = 2e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 0.07
    ema_decay: float = Field(0.999, ge=0, lt=1)
    amp: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    velocity_weight: float = Field(1.0, ge=0, description="autoencoder: weight of the frame-difference loss")
    jaw_weight: float = Field(10.0, ge=0, description="autoencoder: weight of the jaw dims against each expression dim "
                                                     "in its reconstruction and frame-difference losses")
    gather_negatives: bool = Field(True, description="several workers: every worker's clips are the binding InfoNCE's "
                                                      "negatives (all-gathered, as CLIP), not only its own batch")

    @property
    def total_steps(self) -> int:
        return self.binding_steps + self.diffusion_steps


class FacialConfig(Settings):
    preset: str | None = None
    data: FacialData = Field(default_factory=FacialData)
    model: FacialModelConfig = Field(default_factory=FacialModelConfig)
    train: FacialTrain = Field(default_factory=FacialTrain)
    run: RunSection = Field(default_factory=lambda: RunSection(name="facial"))


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": {"window_frames": 24, "batch_size": 8, "shuffle_buffer": 16},
        "model": {"emotion_dim": 32, "encoder_hidden": 64, "latent_dim": 16, "ae_hidden": 64, "dim": 64, "layers": 2,
                  "heads": 4, "audio_hidden": 64, "noise_steps": 100},
        "train": {"binding_steps": 20, "diffusion_steps": 20, "lr": 1e-3, "checkpoint_every": 10, "log_every": 5,
                  "ema_decay": 0.9, "val_every": 10, "val_batches": 4},
        "run": {"name": "facial-tiny", "num_workers": 1, "max_failures": 1},
    },
    # paper scale (GPU): 8-layer 512-wide denoiser over 4 s windows, wav2vec2/HuBERT content features
    "base": {
        "data": {"window_frames": 100, "batch_size": 32, "loader_workers": 4, "shuffle_buffer": 1000},
        "model": {"emotion_dim": 256, "encoder_hidden": 512, "latent_dim": 64, "ae_hidden": 512, "dim": 512,
                  "layers": 8, "heads": 8, "audio_hidden": 512, "noise_steps": 1000},
        "train": {"binding_steps": 20000, "diffusion_steps": 200000, "lr": 1e-4, "checkpoint_every": 2000,
                  "log_every": 100, "ema_decay": 0.9999, "warmup_steps": 1000, "lr_schedule": "cosine", "stats_batches": 64},
        "run": {"name": "facial-base", "num_workers": 8, "use_gpu": True, "cpus_per_worker": 4},
    },
}


# the base model on one GPU (one 1-GPU node of ray_cluster.yaml, or a workstation): the same
# effective batch as ``base``'s 8 workers through 8 accumulated micro-batches per step
PRESETS["base-1gpu"] = _with(PRESETS["base"], {"train": {"grad_accum": 8}, "run": {"name": "facial-base-1gpu", "num_workers": 1}})


def load_facial_config(config: str | None = "tiny", overrides: list[str] | None = None) -> FacialConfig:
    return load_preset_config(FacialConfig, PRESETS, config, overrides)
