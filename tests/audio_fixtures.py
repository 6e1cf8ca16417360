"""Audio with known answers: a calibrated tone, music (a chord progression of harmonic notes),
real speech alone and over that music, noise at a known SNR."""

from __future__ import annotations

import numpy as np

SR = 16000


def tone_at_lufs(lufs: float, seconds: float = 5.0, freq: float = 1000.0, sr: int = SR) -> np.ndarray:
    """A sine calibrated by BS.1770's definition: a full-scale 997–1000 Hz sine in one channel reads
    -3.01 LUFS, so amplitude a reads 20·log10(a) - 3.01 (the K-weighting is ~0 dB at 1 kHz)."""
    t = np.arange(int(seconds * sr)) / sr
    amp = 10 ** ((lufs + 3.01) / 20)
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def music(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Piano-like music: four-note chords (fundamental + 5 decaying partials), one per 0.75 s, a bass
    note per chord, at -20 dBFS RMS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = np.zeros_like(t)
    roots = [57, 60, 62, 65, 67, 55]
    beat = 0.75
    for k in range(int(np.ceil(seconds / beat))):
        root = roots[rng.integers(len(roots))]
        start = k * beat
        sel = (t >= start) & (t < start + 2 * beat)
        tt = t[sel] - start
        env = np.exp(-tt * 1.5) * np.minimum(1.0, tt / 0.01)
        for note in (root - 12, root, root + 4, root + 7):
            f = 440.0 * 2 ** ((note - 69) / 12)
            for h in range(1, 6):
                out[sel] += env * np.sin(2 * np.pi * f * h * tt) / h ** 1.5
    out *= 10 ** (-20 / 20) / (np.sqrt(np.mean(out ** 2)) + 1e-12)
    return out.astype(np.float32)


def mix_at(speech: np.ndarray, other: np.ndarray, db: float) -> np.ndarray:
    """``speech`` + ``other`` scaled to ``db`` below the speech's RMS."""
    other = other[: len(speech)]
    gain = np.sqrt(np.mean(speech ** 2)) / (np.sqrt(np.mean(other ** 2)) + 1e-12) * 10 ** (-db / 20)
    return (speech + gain * other).astype(np.float32)
