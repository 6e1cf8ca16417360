"""Synthetic upper-body shards for trainer 2, written with WebDataset's ShardWriter in the members
the shard format defines (``json``, ``mp4``, ``wav``, ``pose.npz``).

A grey "person": a face disc whose mouth (a dark bar) opens with the loudness of the audio, and
two hands that drift. Part boxes/confidences follow the drawing, so PAR masks and PCE crops are
exact, and mouth–audio synchrony is learnable.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
from clip_records import clip_json

FPS, SR = 25, 16000


def envelope(rng: np.random.Generator, frames: int) -> np.ndarray:
    t = np.arange(frames) / FPS
    return np.clip(np.sin(2 * np.pi * rng.uniform(2.0, 4.0) * t + rng.uniform(0, 6.28)), 0, None)


def draw_frames(env: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (T, S, S, 3) uint8, part boxes (T, 5, 4) and confidences (T, 5)."""
    T = len(env)
    frames = np.full((T, size, size, 3), 90, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cx, cy, r = size // 2, size // 3, size // 5
    boxes = np.zeros((T, 5, 4), np.float32)
    conf = np.zeros((T, 5), np.float32)
    hand0 = rng.uniform(0.15, 0.25) * size
    for f in range(T):
        img = frames[f]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (200, 170, 150)
        open_px = 1 + int(round(env[f] * r * 0.6))
        my0, mx0, mx1 = cy + r // 3, cx - r // 2, cx + r // 2
        img[my0: my0 + open_px, mx0:mx1] = (40, 20, 20)
        hy = int(0.75 * size + 2 * np.sin(f / 3))
        hs = max(3, size // 8)
        for side, hx in ((2, int(hand0)), (3, int(size - hand0 - hs))):
            img[hy: hy + hs, hx: hx + hs] = (210, 180, 160)
            boxes[f, side] = (hx, hy, hx + hs, hy + hs)
            conf[f, side] = 0.9
        boxes[f, 0] = (cx - r, cy - r, cx + r, cy + r)
        boxes[f, 1] = (mx0, my0 - 1, mx1, my0 + max(open_px, 2) + 1)
        boxes[f, 4] = (size * 0.2, cy + r, size * 0.8, size)
        conf[f, [0, 1, 4]] = (0.95, 0.9, 0.8)
    return frames, boxes, conf


def encode_mp4(frames: np.ndarray) -> bytes:
    T, H, W, _ = frames.shape
    proc = subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}",
                           "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-crf", "8", "-pix_fmt", "yuv444p",
                           "-f", "mp4", "-movflags", "frag_keyframe+empty_moov", "-"],
                          input=frames.tobytes(), capture_output=True, check=True)
    return proc.stdout


def write_paha_shards(out: Path, clips: int = 8, frames: int = 24, size: int = 64, per_shard: int = 4, seed: int = 0,
                      identities: list[str | None] | None = None) -> list[str]:
    import soundfile as sf
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with wds.ShardWriter(str(out / "paha-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(clips):
            env = envelope(rng, frames)
            video, boxes, conf = draw_frames(env, size, rng)
            carrier = np.sin(2 * np.pi * rng.uniform(120, 220) * np.arange(frames * SR // FPS) / SR)
            audio = (0.5 * np.repeat(env, SR // FPS) * carrier).astype(np.float32)
            wav = io.BytesIO()
            sf.write(wav, audio, SR, format="WAV", subtype="PCM_16")
            npz = io.BytesIO()
            np.savez(npz, part_confidences=conf, part_present=conf > 0, part_boxes=boxes)
            key = f"body{i:04d}-0000"
            who = {"identity": identities[i]} if identities else {}
            meta = clip_json(key, frames, ["json", "mp4", "wav", "pose.npz"], fps=FPS, sample_rate_hz=SR, width=size, height=size, **who)
            w.write({"__key__": key, "json": meta, "mp4": encode_mp4(video), "wav": wav.getvalue(), "pose.npz": npz.getvalue()})
    return sorted(str(p) for p in out.glob("*.tar"))
