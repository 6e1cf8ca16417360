"""Fingerprints of a clip for rebroadcast detection, and how two of them are compared.

- Picture: a 64-bit DCT perceptual hash (``imagehash.phash``) of the speaker crop, ``video_hz``
  times a second. A re-encode, a rescale or a small re-crop changes a few bits; another moment of
  the same anchor in the same studio changes few bits too, so the picture alone cannot tell a
  rebroadcast from the next sentence.
- Sound: Haitsma & Kalker's sub-fingerprints ("A Highly Robust Audio Fingerprinting System",
  ISMIR 2002): 33 log-spaced bands from 300 to 2,000 Hz of a 0.256-s frame every ``HOP_S``, and bit
  ``m`` of frame ``n`` is the sign of ``(E[n,m] − E[n,m+1]) − (E[n−1,m] − E[n−1,m+1])``. Two copies
  of the same audio differ in few bits (re-encoding, loudness); unrelated audio in half. The bit
  error rate (BER) at the best alignment decides, the picture confirms.
"""

from __future__ import annotations

import base64

import numpy as np

from schemas.curation import ClipFingerprint

SAMPLE_RATE = 16000
FRAME = 4096  # 0.256 s at 16 kHz
HOP_S = 0.032
BANDS = 33
BAND_LO_HZ, BAND_HI_HZ = 300.0, 2000.0


def video_hash(crop_rgb: np.ndarray) -> str:
    """64-bit phash of an RGB crop, as 16 hex digits."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(crop_rgb).convert("L")))


def audio_subfingerprints(samples: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """uint32 sub-fingerprints of mono ``samples`` (float in [-1, 1] at ``sr``), one per ``HOP_S``."""
    x = np.asarray(samples, np.float32)
    hop = round(HOP_S * sr)
    if len(x) < FRAME + hop:
        return np.zeros(0, np.uint32)
    n = 1 + (len(x) - FRAME) // hop
    idx = np.arange(FRAME)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(FRAME).astype(np.float32), axis=1)) ** 2
    freqs = np.fft.rfftfreq(FRAME, 1.0 / sr)
    edges = np.geomspace(BAND_LO_HZ, BAND_HI_HZ, BANDS + 1)
    band = np.stack([spec[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
    d = band[:, :-1] - band[:, 1:]            # (n, 32)
    bits = (d[1:] - d[:-1]) > 0                # (n - 1, 32)
    return np.packbits(bits, axis=1, bitorder="little").view("<u4").ravel()


def encode_audio(fp: np.ndarray) -> str:
    return base64.b64encode(np.asarray(fp, "<u4").tobytes()).decode("ascii")


def decode_audio(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<u4") if text else np.zeros(0, np.uint32)


def make_fingerprint(crop_hashes: list[str], video_hz: float, samples: np.ndarray, sr: int = SAMPLE_RATE) -> ClipFingerprint:
    return ClipFingerprint(video_hz=video_hz, video=crop_hashes, audio_hop_s=HOP_S, audio=encode_audio(audio_subfingerprints(samples, sr)))


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _bit_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits per element of two equal-length uint32 arrays."""
    x = np.bitwise_xor(a, b).view(np.uint8).reshape(-1, 4)
    return _POPCOUNT[x].sum(axis=1)


def best_alignment(a: np.ndarray, b: np.ndarray, min_overlap: int) -> tuple[float, int]:
    """(lowest BER, lag) over every lag at which ``a`` and ``b`` overlap by at least ``min_overlap``
    sub-fingerprints; ``a[i]`` is compared with ``b[i - lag]``. (0.5, 0) when they never do."""
    best, best_lag = 0.5, 0
    for lag in range(-(len(b) - min_overlap), len(a) - min_overlap + 1):
        i0, i1 = max(0, lag), min(len(a), len(b) + lag)
        if i1 - i0 < min_overlap:
            continue
        ber = _bit_errors(a[i0:i1], b[i0 - lag:i1 - lag]).mean() / 32
        if ber < best:
            best, best_lag = float(ber), lag
    return best, best_lag


def hamming_hex(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def video_distance(a: ClipFingerprint, b: ClipFingerprint, shift_s: float) -> float | None:
    """Median Hamming distance of ``a``'s crop hashes to ``b``'s at the same moment of the content,
    which comes ``shift_s`` earlier in ``b`` than in ``a``; None when no moment is in both."""
    dists = []
    for i, h in enumerate(a.video):
        j = round((i / a.video_hz - shift_s) * b.video_hz)
        if 0 <= j < len(b.video):
            dists.append(hamming_hex(h, b.video[j]))
    return float(np.median(dists)) if dists else None


def same_content(a: ClipFingerprint, b: ClipFingerprint, max_ber: float, max_hamming: int, min_overlap: float) -> tuple[bool, float, float | None]:
    """Whether ``a`` and ``b`` are copies of one piece of broadcast: audio aligned with a BER of at
    most ``max_ber`` over at least ``min_overlap`` of the shorter clip, and the crops at the aligned
    moments within ``max_hamming`` bits (median). Returns (decision, BER, picture distance)."""
    fa, fb = decode_audio(a.audio), decode_audio(b.audio)
    need = max(8, int(min_overlap * min(len(fa), len(fb))))
    if min(len(fa), len(fb)) < need:
        return False, 0.5, None
    ber, lag = best_alignment(fa, fb, need)
    if ber > max_ber:
        return False, ber, None
    dist = video_distance(a, b, lag * a.audio_hop_s)
    return dist is not None and dist <= max_hamming, ber, dist
