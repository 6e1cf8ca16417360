"""``cnas features paha``: the frozen parts of trainer 2 run once per clip instead of on every step.

    cnas features paha --config base --set data.urls=release/train.index.json --out features/train

For every clip of the shards: all its frames at ``data.image_size`` (the ``paha`` view's square crop)
through the latent model (the SD VAE's posterior mean, or the tiny preset's pixel unshuffle), and its
whole soundtrack through the audio front end (HuBERT/wav2vec2 by path, or the spectrogram), one row per
frame. ``data.features`` then points a training run at the store (``trainers/features.py``); the loader
reads the window's rows and decodes no video.

Audio features are computed over the whole clip and sliced per window: a backbone with context
(HuBERT) sees the clip around the window rather than the window alone — as Hallo/EchoMimic precompute
them. VAE latents are the same as the per-step ones (the posterior mean is deterministic), up to
float16 storage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.data import LoaderConfig, _audio_window, clip_record, decode_frames, make_loader
from trainers.features import FeatureWriter, folder_digest

from .config import PahaConfig, PahaModel
from .model import FPS, make_frontend
from .latent import make_latent

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


def feature_meta(model: PahaModel, image_size: int) -> dict[str, Any]:
    """What a store's features depend on; a run with other values refuses the store."""
    latent = f"vae:{folder_digest(model.vae)}" if model.vae else f"pixel:{model.latent_factor}"
    audio = (f"speech:{folder_digest(model.audio_backbone)}:{model.audio_backbone_layer}" if model.audio_backbone
             else f"spectrogram:{FPS:g}")
    return {"latent": latent, "audio": audio, "image_size": image_size, "fps": FPS, "sample_rate_hz": SAMPLE_RATE}


@torch.no_grad()
def write_features(cfg: PahaConfig, out: str | Path, urls: str | list[str] | None = None, device: str = "cpu",
                   echo=print) -> dict[str, Any]:
    """Compute the store for the shards ``urls`` (default ``data.urls``) into ``out``; clips already
    there with the same members and settings are kept. Returns counts."""
    urls = urls or cfg.data.urls
    if not urls:
        raise ValueError("no shards: give data.urls (or --set data.urls=...)")
    S = cfg.data.image_size
    writer = FeatureWriter(out, feature_meta(cfg.model, S))
    latent = make_latent(cfg.model.vae, cfg.model.latent_factor).to(device).eval()
    frontend = make_frontend(cfg.model).to(device).eval()
    done = kept = 0
    for sample in make_loader(LoaderConfig(urls=urls, view="raw", max_member_bytes=cfg.data.max_member_mb * 2**20)):
        key, mp4, wav = sample["__key__"], sample.get("mp4"), sample.get("wav")
        if mp4 is None or wav is None:
            continue
        if writer.has(key, mp4, wav):
            kept += 1
            continue
        clip = clip_record({"__key__": key, "json": _json_bytes(sample["json"])})
        frames = decode_frames(mp4, list(range(clip.num_frames)), S, expect_wh=(clip.width, clip.height))
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).to(device).float() / 255.0
        z = latent.encode(video)
        wave = _audio_window(wav, 0.0, clip.num_frames / clip.fps, SAMPLE_RATE).to(device)
        audio = frontend(wave[None], clip.num_frames)[0]
        writer.add(key, mp4, wav, {"latents": z.cpu().numpy().astype(np.float16), "audio": audio.cpu().numpy().astype(np.float16)})
        done += 1
        if done % 50 == 0:
            echo(f"features: {done} clips")
    index = writer.close()
    return {"computed": done, "kept": kept, "index": str(index)}


def _json_bytes(record: Any) -> bytes:
    import json

    return json.dumps(record).encode() if isinstance(record, dict) else record
