"""Audio quality of a clip: loudness, SNR, clipping and a music/background score, with filters.

* ``loudness_lufs``: integrated loudness, ITU-R BS.1770-4 / EBU R128 (pyloudnorm's ``Meter``); NaN
  for clips shorter than one 400-ms gating block.
* ``snr_db``: speech vs non-speech power of 32-ms frames: the frames above the median against the
  quietest 10 % (the pauses between words and phrases). Word times are not used: aligners place
  word edges tens of milliseconds off, which put speech into the "noise" and read 5 dB on clean
  speech. A caller with a trustworthy speech mask can pass it to ``snr_db``.
* ``clipping_ratio``: share of samples at or within 1 LSB of 16-bit full scale.
* ``music_score``: share of the spectral energy (0–5 kHz) in *persistent tonal peaks*: STFT bins
  that are local spectral maxima for at least ``persist_s`` (0.5 s) in a row. Music holds notes at
  fixed frequencies; speech harmonics glide with the pitch and last one syllable. Measured on the
  fixtures in docs/identity.md ("Audio quality").
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from schemas import GateCheck
from schemas.settings import Settings

FRAME_S = 0.032  # analysis frame and hop for SNR and the music score


class AudioQualityOptions(Settings):
    """Audio figures of every clip and, for selected clips, filters (``clips.audio_*`` in the config)."""

    audio_filter: bool = Field(True, description="reject selected clips that fail the limits below (fixed-window clips are only measured)")
    audio_min_loudness_lufs: float = Field(-45.0, description="quieter clips are too_quiet")
    audio_min_snr_db: float = Field(6.0, description="speech less than this above the non-speech floor is low_snr (a clip of continuous speech has no pause to measure the floor on: real talk-show clips read 8–12 dB)")
    audio_max_clipping_ratio: float = Field(0.001, ge=0, le=1, description="share of samples at full scale; more is clipped_audio")
    audio_max_music_score: float = Field(0.25, ge=0, le=1, description="share of energy in persistent tonal peaks; more is background_music (real speech alone reaches 0.20 in 2.5-s windows; music alone > 0.4; docs/speech.md)")
    audio_persist_s: float = Field(0.5, gt=0, description="a tonal peak lasting this long counts as music")


def loudness_lufs(audio: np.ndarray, sr: int) -> float:
    """Integrated loudness (LUFS) of float audio in [-1, 1]; NaN when shorter than 0.4 s."""
    import pyloudnorm

    if len(audio) < int(0.4 * sr) + 1:
        return float("nan")
    value = pyloudnorm.Meter(sr).integrated_loudness(np.asarray(audio, np.float64))
    return float(value) if np.isfinite(value) else float("-inf")


def _frames(audio: np.ndarray, sr: int) -> np.ndarray:
    hop = int(FRAME_S * sr)
    n = len(audio) // hop
    return np.asarray(audio[: n * hop], np.float64).reshape(n, hop)


def snr_db(audio: np.ndarray, sr: int, speech: np.ndarray | None = None) -> float:
    """Speech over non-speech power in dB; ``speech`` marks speech frames (``FRAME_S`` each)."""
    power = (_frames(audio, sr) ** 2).mean(axis=1) + 1e-12
    if len(power) < 4:
        return float("nan")
    if speech is None or speech.sum() == 0 or (~speech).sum() < max(2, 0.1 * len(power)):
        order = np.sort(power)
        noise = order[: max(1, len(order) // 10)].mean()
        signal = order[len(order) // 2:].mean()
    else:
        noise, signal = power[~speech].mean(), power[speech].mean()
    return float(10 * np.log10(signal / noise))


def clipping_ratio(audio_int16: np.ndarray) -> float:
    return float(np.mean(np.abs(audio_int16.astype(np.int32)) >= 32766)) if len(audio_int16) else 0.0


def music_score(audio: np.ndarray, sr: int, persist_s: float = 0.5, fmax: float = 5000.0) -> float:
    """Share of the 0–``fmax`` Hz spectral energy in bins that stay local maxima for ``persist_s``."""
    win = int(0.064 * sr)
    hop = int(FRAME_S * sr)
    x = np.asarray(audio, np.float64)
    if len(x) < win + hop * 4:
        return 0.0
    n = 1 + (len(x) - win) // hop
    frames = x[np.arange(n)[:, None] * hop + np.arange(win)] * np.hanning(win)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    spec = spec[:, : int(fmax * win / sr)]
    floor = np.median(spec) + 1e-12
    peak = (spec[:, 1:-1] > spec[:, :-2]) & (spec[:, 1:-1] >= spec[:, 2:]) & (spec[:, 1:-1] > 10 * floor)
    # a peak may drift one bin between frames (vibrato, rounding): dilate across neighbours
    near = peak.copy()
    near[:, 1:] |= peak[:, :-1]
    near[:, :-1] |= peak[:, 1:]
    need = max(2, int(round(persist_s / FRAME_S)))
    persistent = np.zeros_like(peak)
    for j in np.flatnonzero(near.sum(axis=0) >= need):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], near[:, j].astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= need:
                persistent[a:b, j] = peak[a:b, j]
    energy = spec[:, 1:-1]
    total = energy.sum()
    return float(energy[persistent].sum() / total) if total > 0 else 0.0


def audio_quality(audio_int16: np.ndarray, sr: int, opts: AudioQualityOptions) -> dict[str, float]:
    """The quality figures of one clip's audio (16-bit samples) for its record."""
    x = audio_int16.astype(np.float32) / 32768.0
    figures = {
        # below BS.1770's absolute gate (-70 LUFS) nothing is measured: digital silence reads -120
        "loudness_lufs": max(loudness_lufs(x, sr), -120.0),
        "snr_db": snr_db(x, sr),
        "clipping_ratio": clipping_ratio(audio_int16),
        "music_score": music_score(x, sr, opts.audio_persist_s),
    }
    # NaN (too short to measure) is left out: a record's figures are numbers
    return {k: round(float(v), 5) for k, v in figures.items() if np.isfinite(v)}


def audio_checks(q: dict[str, float], opts: AudioQualityOptions) -> dict[str, GateCheck]:
    """Each audio filter's verdict on a clip's figures, with score and threshold (``unverified``:
    a figure that could not be measured, which passes)."""
    limits = (("loudness_lufs", "too_quiet", opts.audio_min_loudness_lufs, True),
              ("clipping_ratio", "clipped_audio", opts.audio_max_clipping_ratio, False),
              ("snr_db", "low_snr", opts.audio_min_snr_db, True),
              ("music_score", "background_music", opts.audio_max_music_score, False))
    return {name: GateCheck.measure(q.get(name), limit, reason, at_least) for name, reason, limit, at_least in limits}


def audio_reject(q: dict[str, float], opts: AudioQualityOptions) -> str | None:
    """The first audio filter the figures fail, or None (a figure that could not be measured passes)."""
    return next((c.reason for c in audio_checks(q, opts).values() if c.verdict == "fail"), None)
