"""Synthetic facial-view shards with a learnable structure, written with WebDataset's ShardWriter
in the members the shard format defines (``json``, ``wav``, ``flame.npz``).

Each clip has an emotion label; its expression codes carry a label-specific offset (so motion and
label/text can be bound), and the jaw opening follows the loudness of its audio (so audio drives
the mouth, as in speech).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from clip_records import clip_json

from trainers.data import EMOTIONS

FPS, SR = 25, 16000


def synthetic_clip(rng: np.random.Generator, label: int, frames: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(audio (S,), exp (T, 50), pose (T, 6)) for one clip of emotion ``label``."""
    t = np.arange(frames) / FPS
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * t + rng.uniform(0, 6.28)), 0, None)  # syllables
    carrier = np.sin(2 * np.pi * rng.uniform(120, 220) * np.arange(frames * SR // FPS) / SR)
    audio = (0.5 * np.repeat(envelope, SR // FPS) * carrier).astype(np.float32)
    exp = offsets[label][None] + 0.1 * rng.standard_normal((frames, 50))
    pose = np.zeros((frames, 6))
    pose[:, 3] = 0.3 * envelope  # jaw opens with loudness
    return audio, exp.astype(np.float32), pose.astype(np.float32)


def write_facial_shards(out: Path, clips: int = 16, frames: int = 50, per_shard: int = 4, seed: int = 0,
                        labels: int = 4, prefix: str = "clip") -> list[str]:
    """``clips`` labelled clips in facial shards; ``prefix`` names their videos (sets meant to be disjoint,
    e.g. a probe's training set and an evaluation set, need different prefixes: clip keys identify clips)."""
    import soundfile as sf
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    offsets = np.random.default_rng(1234).standard_normal((len(EMOTIONS), 50))
    with wds.ShardWriter(str(out / "facial-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(clips):
            label = i % labels
            audio, exp, pose = synthetic_clip(rng, label, frames, offsets)
            wav = io.BytesIO()
            sf.write(wav, audio, SR, format="WAV", subtype="PCM_16")
            npz = io.BytesIO()
            # every member of the shard format's flame.npz (schemas.FlameFit), as the FLAME stage writes it
            np.savez(npz, shape=np.zeros(100, np.float32), exp=exp, pose=pose, cam=np.tile(np.float32([8.0, 0.0, 0.0]), (frames, 1)),
                     valid=np.ones(frames, bool))
            key = f"{prefix}{i:04d}-0000"
            meta = clip_json(key, frames, ["json", "wav", "flame.npz"], fps=FPS, sample_rate_hz=SR,
                             source_metadata={"emotion": EMOTIONS[label], "emotion_intensity": 1 + i % 3})
            w.write({"__key__": key, "json": meta, "wav": wav.getvalue(), "flame.npz": npz.getvalue()})
    return sorted(str(p) for p in out.glob("*.tar"))


def speech_envelope(audio: np.ndarray, frames: int) -> np.ndarray:
    """Per-frame loudness of speech in [0, 1]: RMS of the 300–3400 Hz band per 40-ms frame, smoothed
    over three frames, over its 95th percentile."""
    from scipy.signal import butter, sosfiltfilt

    band = sosfiltfilt(butter(4, [300, 3400], btype="band", fs=SR, output="sos"), audio)
    hop = SR // FPS
    rms = np.sqrt(np.mean(band[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    rms = np.convolve(rms, np.ones(3) / 3, mode="same")
    return np.clip(rms / (np.percentile(rms, 95) + 1e-8), 0, 1)


def write_speech_facial_shards(out: Path, clips: int = 16, seed: int = 0, labels: int = 4, prefix: str = "speech",
                               span_s: tuple[float, float] = (0.0, 20.0), frames: tuple[int, int] = (50, 125),
                               offset_scale: float = 0.5, noise: float = 0.25, per_shard: int = 4) -> list[str]:
    """A second labelled set, made differently from ``write_facial_shards``: real speech (pyannote's
    sample recording, cut from ``span_s`` so that sets drawn from different spans have different
    audio) with the jaw following its band loudness; clips of 2–5 s; emotion offsets of
    ``offset_scale`` (other directions than the first set's) under ``noise`` per-frame noise."""
    import soundfile as sf
    import webdataset as wds
    from talking_fixtures import package_file

    speech, sr = sf.read(package_file("pyannote.audio", "sample", "sample.wav"), dtype="float32")
    assert sr == SR, sr
    speech = speech[int(span_s[0] * SR): int(span_s[1] * SR)]
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    offsets = offset_scale * np.random.default_rng(4321).standard_normal((len(EMOTIONS), 50))
    with wds.ShardWriter(str(out / "facial-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(clips):
            label, T = i % labels, int(rng.integers(frames[0], frames[1] + 1))
            start = int(rng.integers(0, len(speech) - T * SR // FPS))
            audio = speech[start: start + T * SR // FPS] * rng.uniform(0.5, 1.5)
            exp = offsets[label][None] + noise * rng.standard_normal((T, 50))
            pose = np.zeros((T, 6))
            pose[:, 3] = 0.3 * speech_envelope(audio, T) + 0.02 * rng.standard_normal(T)
            wav = io.BytesIO()
            sf.write(wav, np.clip(audio, -1, 1), SR, format="WAV", subtype="PCM_16")
            npz = io.BytesIO()
            np.savez(npz, shape=np.zeros(100, np.float32), exp=exp.astype(np.float32), pose=pose.astype(np.float32),
                     cam=np.tile(np.float32([8.0, 0.0, 0.0]), (T, 1)), valid=np.ones(T, bool))
            key = f"{prefix}{i:04d}-0000"
            meta = clip_json(key, T, ["json", "wav", "flame.npz"], fps=FPS, sample_rate_hz=SR,
                             source_metadata={"emotion": EMOTIONS[label], "emotion_intensity": 1 + i % 3})
            w.write({"__key__": key, "json": meta, "wav": wav.getvalue(), "flame.npz": npz.getvalue()})
    return sorted(str(p) for p in out.glob("*.tar"))
