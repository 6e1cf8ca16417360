"""Lip shape from speech: the model-free sync backend (``sync.backend=lips``) for real faces.

A real face's lips follow its voice loosely: a landmark series is noisy, the mouth opens before the
sound it makes, and loudness alone (the old ``mouth`` backend's audio feature) says little about
how far the mouth is open. What holds across speakers is that the *spectrum* of the sound says
roughly how the lips are shaped. So:

* video feature, per frame and face: three lip measures of the 478-point face mesh, in units of the
  outer-eye-corner distance and rotated so the eyes are level (``lip_features``): the inner-lip gap
  (``geometry.landmarks.mouth_opening``), the outer lip height and the outer lip width;
* audio feature, per frame: the same three measures *predicted* from the log-mel spectrum of the
  frame and ±``context`` frames around it (``log_mel``, normalised over the video), by a ridge
  regression fitted once on real recordings (``fit``; the shipped fit, its data and its held-out
  scores: docs/sync.md and ``benchmarks/gates.py``);
* the offset search correlates the measured with the predicted series (``geometry.syncnet.score``,
  backend ``lips``): the mean Pearson r of the three measures at each offset. An in-sync real face
  scores r 0.2–0.55 at an offset within ±3 frames; a dub peaks lower and at any offset.

The model is 3 × (2·context+1)·n_mels numbers in ``geometry/data/lip_audio.npz``; it is not a
neural network and knows nothing of any face: it maps sound to lip shape, the same for everyone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .landmarks import EYE_CORNERS, INNER_LIP_MID, LIPS
from .syncnet import frame_power_spectra, spectrum_window

MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lip_audio.npz")
LIP_MEASURES = ("inner_gap", "outer_height", "outer_width")
_LIPS = list(LIPS)


def lip_features(faces: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(..., 3)`` lip measures of face meshes ``(..., 478, 2+)`` in [0, 1] image coordinates (NaN
    where there is no face): inner-lip gap, outer lip height and width over the eye-corner
    distance, measured with the eyes rotated level (a tilted head does not widen the mouth)."""
    xy = np.asarray(faces[..., :2], np.float64) * np.array([width, height])
    left, right = xy[..., EYE_CORNERS[0], :], xy[..., EYE_CORNERS[1], :]
    d = right - left
    with np.errstate(invalid="ignore", divide="ignore"):
        eyes = np.linalg.norm(d, axis=-1)
        cos, sin = d[..., 0] / eyes, d[..., 1] / eyes
        lips = xy[..., _LIPS, :]
        x = lips[..., 0] * cos[..., None] + lips[..., 1] * sin[..., None]
        y = -lips[..., 0] * sin[..., None] + lips[..., 1] * cos[..., None]
        gap = np.linalg.norm(xy[..., INNER_LIP_MID[0], :] - xy[..., INNER_LIP_MID[1], :], axis=-1)
        out = np.stack([gap, y.max(-1) - y.min(-1), x.max(-1) - x.min(-1)], -1) / eyes[..., None]
    return out.astype(np.float32)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 80.0, fmax: float = 7600.0) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters evenly spaced on the mel scale (HTK formula)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(min(fmax, sr / 2)), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        a, b, c = edges[i: i + 3]
        fb[i] = np.clip(np.minimum((freqs - a) / (b - a), (c - freqs) / (c - b)), 0.0, None)
    return fb


def log_mel(audio: np.ndarray, sr: int, fps: float, num_frames: int, n_mels: int = 40, block: int = 2048) -> np.ndarray:
    """``(num_frames, n_mels)`` log mel energies around each video frame, each band normalised to
    zero mean and unit variance over the video (the channel, the microphone and the level drop out)."""
    fb = mel_filterbank(sr, spectrum_window(sr, fps), n_mels)
    out = np.empty((num_frames, n_mels), np.float32)
    for b0, spec in frame_power_spectra(audio, sr, fps, num_frames, block):
        out[b0: b0 + len(spec)] = np.log(spec @ fb.T + 1e-8)
    return (out - out.mean(0)) / (out.std(0) + 1e-6)


def with_context(x: np.ndarray, context: int) -> np.ndarray:
    """``(n, (2·context+1)·d)``: each row next to its ``context`` neighbours on both sides (edge rows repeated)."""
    n = len(x)
    padded = np.pad(x, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([padded[i: i + n] for i in range(2 * context + 1)], 1)


@dataclass
class LipAudioModel:
    """The ridge regression from log-mel context to the three lip measures (z-scored)."""

    weights: np.ndarray  # ((2·context+1)·n_mels, 3)
    context: int
    n_mels: int
    info: dict

    def predict(self, mel: np.ndarray, block: int = 65536) -> np.ndarray:
        """``(n, 3)`` lip measures predicted from ``log_mel`` rows (blocks: an hour is 90k frames)."""
        out = np.empty((len(mel), self.weights.shape[1]), np.float32)
        c = self.context
        for b0 in range(0, len(mel), block):
            lo, hi = max(0, b0 - c), min(len(mel), b0 + block + c)
            ctx = with_context(mel[lo:hi], c)
            out[b0: b0 + block] = (ctx @ self.weights)[b0 - lo: b0 - lo + min(block, len(mel) - b0)]
        return out

    def save(self, path: str) -> None:
        np.savez(path, weights=self.weights.astype(np.float32), context=self.context, n_mels=self.n_mels,
                 info=json.dumps(self.info, sort_keys=True))

    @classmethod
    def load(cls, path: str = MODEL_PATH) -> "LipAudioModel":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["weights"], int(z["context"]), int(z["n_mels"]), json.loads(str(z["info"])))


def fit(pairs: list[tuple[np.ndarray, np.ndarray]], context: int = 2, ridge: float = 3.0, info: dict | None = None) -> LipAudioModel:
    """Fit on ``(lip measures (T, 3), log_mel (T, n_mels))`` pairs of in-sync real recordings: each
    recording's measures are z-scored (faces differ in size and shape), frames without a face are
    left out, and the ridge penalty is ``ridge`` × frames on standardised inputs."""
    xs, ys = [], []
    for lips, mel in pairs:
        ok = ~np.isnan(lips).any(1)
        y = (lips - np.nanmean(lips, 0)) / (np.nanstd(lips, 0) + 1e-9)
        xs.append(with_context(mel, context)[ok])
        ys.append(y[ok])
    x, y = np.concatenate(xs), np.concatenate(ys)
    w = np.linalg.solve(x.T @ x + ridge * len(x) * np.eye(x.shape[1]), x.T @ y)
    meta = {"context": context, "ridge": ridge, "frames": int(len(x)), **(info or {})}
    return LipAudioModel(w.astype(np.float32), context, pairs[0][1].shape[1], meta)
