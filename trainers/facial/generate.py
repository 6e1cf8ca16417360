"""Sampling from a trained trainer-1 checkpoint.

    cnas generate facial --checkpoint runs/facial-base --audio speech.wav \\
        --emotion-label angry --intensity 2 --out seq.npz [--flame-model generic_model.pkl --preview seq.mp4]

Audio longer than the training window is generated in overlapping windows whose decoded motion
is cross-faded linearly over the overlap (each window sees its own audio span; windows share the
emotion embedding and the seed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.checkpoint import find_checkpoint, load_checkpoint_file
from trainers.data import EMOTIONS
from trainers.media import SR, read_audio

from .config import FacialConfig
from .model import FPS, FacialModel
from .train import load_model_state


log = logging.getLogger(__name__)


def load_trained(path: str | Path, device: str = "cpu", use_ema: bool = True) -> tuple[FacialModel, FacialConfig, int]:
    """The model of a checkpoint with the EMA weights in the denoiser, its config and its step."""
    ckpt = find_checkpoint(path)
    state = load_checkpoint_file(ckpt / "model.pt", map_location=device)
    cfg = FacialConfig.model_validate(state["config"])
    model = FacialModel(cfg.model).to(device)
    load_model_state(model, state["model"])
    if use_ema and state["step"] > cfg.train.binding_steps:
        # the EMA shadow starts at the initial weights, so it is only used once phase 2 has run
        shadow = {f"diffusion.{k}": v for k, v in state["ema"].items()}
        model.load_state_dict({**model.state_dict(), **shadow})
    return model.eval(), cfg, state["step"]


def emotion_from_args(model: FacialModel, text: str | None = None, label: str | None = None, intensity: int = 1,
                      audio: str | None = None) -> torch.Tensor:
    """The bound emotion embedding (1, D) from exactly one of text, label(+intensity), audio file."""
    device = model.motion_mean.device
    if sum(x is not None for x in (text, label, audio)) != 1:
        raise ValueError("give exactly one of --emotion-text, --emotion-label, --emotion-audio")
    if label is not None:
        if label.lower() not in EMOTIONS:
            raise ValueError(f"unknown emotion label {label!r}; known: {', '.join(EMOTIONS)}")
        if not 1 <= intensity <= 3:
            raise ValueError("intensity must be 1, 2 or 3")
        return model.emotion_embedding(label=torch.tensor([EMOTIONS.index(label.lower())], device=device),
                                       intensity=torch.tensor([intensity], device=device))
    if audio is not None:
        return model.emotion_embedding(wave=read_audio(audio)[None].to(device))
    return model.emotion_embedding(text=[text])


@torch.no_grad()
def generate_motion(model: FacialModel, wave: torch.Tensor, emotion: torch.Tensor, window_frames: int, seed: int = 0,
                    steps: int = 50, audio_scale: float = 2.0, emotion_scale: float = 1.5, overlap: int | None = None) -> np.ndarray:
    """Motion (T, 53) for a whole waveform, T = duration × 25, in overlapping windows."""
    total = max(2, int(round(len(wave) / SR * FPS)))
    W = window_frames
    overlap = W // 4 if overlap is None else overlap
    hop = max(2, (W - overlap) // 2 * 2)
    starts = list(range(0, max(total - W, 0) + 1, hop))
    if starts[-1] + W < total:
        starts.append(total - W)
    out = np.zeros((max(total, W), 53), np.float64)
    device = model.motion_mean.device
    g = torch.Generator().manual_seed(seed)
    prev_end = 0
    for s in starts:
        seg = torch.zeros(W * SR // int(FPS))
        chunk = wave[s * SR // int(FPS): (s + W) * SR // int(FPS)]
        seg[: len(chunk)] = chunk
        noise = torch.randn((1, W // 2, model.cfg.latent_dim), generator=g).to(device)
        m = model.generate(seg[None].to(device), emotion, W, steps, audio_scale, emotion_scale, noise)[0].cpu().numpy()
        shared = max(0, prev_end - s)  # frames shared with the previous window (the last window may share more)
        if shared:  # cross-fade: the new window's weight rises linearly over the shared frames
            a = np.linspace(0, 1, shared + 2)[1:-1, None]
            out[s: s + shared] = (1 - a) * out[s: s + shared] + a * m[:shared]
        out[s + shared: s + W] = m[shared:]
        prev_end = s + W
    return out[:total].astype(np.float32)


def save_sequence(path: str | Path, motion: np.ndarray, info: dict[str, Any]) -> None:
    """FLAME parameters in the layout of the shards' flame.npz (exp 50, pose 6 = global 3 + jaw 3)."""
    pose = np.zeros((len(motion), 6), np.float32)
    pose[:, 3:6] = motion[:, 50:53]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, exp=motion[:, :50], pose=pose, valid=np.ones(len(motion), bool), fps=np.float32(FPS),
             info=np.array(str(info)))
