"""Measures of audio conditioning shared by the trainers' ``cnas eval`` reports: the loudness
envelope of the audio a clip was generated from, and its correlation with a motion series measured
on the output — the facial model's jaw opening (``trainers/facial/evaluate.py``), the mouth opening
MediaPipe measures on PAHA's generated frames (``trainers/paha/evaluate.py``). Matched against
swapped audio, a model that follows its audio has matched ≫ swapped ≈ 0 (chance)."""

from __future__ import annotations

import numpy as np

from trainers.media import SR

FPS = 25  # frame rate of both trainers' motion and video


def audio_envelope(wave: np.ndarray, num_frames: int, sr: int = SR, fps: float = FPS) -> np.ndarray:
    """Per-frame RMS of 80–4000 Hz of ``wave``: voiced speech, not rumble or hiss."""
    from geometry.syncnet import speech_band_rms

    return speech_band_rms(wave, sr, fps, num_frames, band=(80.0, 4000.0))


def envelope_correlation(series: np.ndarray, envelope: np.ndarray) -> float | None:
    """Pearson correlation of two equal-length series over the frames where both are defined (a
    NaN — e.g. a frame where no face was found — is left out); None when either is constant there
    or fewer than 3 frames remain (undefined, not 0)."""
    a, b = np.asarray(series, np.float64), np.asarray(envelope, np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def mean_defined(values: list[float | None]) -> float | None:
    """Mean of the defined values (None or NaN: a measure undefined for that clip, left out); None
    when no value is defined — a report says "not measured", never 0."""
    defined = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(defined)) if defined else None
