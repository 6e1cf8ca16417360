"""SyncNet and the audio-visual offset search, as syncnet_python computes them, shared by the ingest's
sync stage (``stages/sync.py``) and trainer 2's Sync-C/Sync-D (``trainers/paha/metrics.py``).

* ``score``: the offset search over ±vshift frames — ``distance`` curves (SyncNet embeddings:
  syncnet_python's ``calc_pdist`` / ``evaluate``; offset = vshift − argmin, confidence = median −
  min) or ``correlation`` curves (lip measures against the lip measures predicted from the audio,
  ``geometry/lip_audio.py``; offset = argmax, confidence = the peak's mean r).
* ``SyncNetModel``: ``syncnet_v2.model`` (a state dict of syncnet_python's ``S``) with its lip and
  audio embeddings; ``syncnet_crop``: syncnet_python's face crop.
* ``speech_band_rms``: per-frame RMS of a frequency band of the audio.

Offset convention (SyncNet's): ``offset > 0`` means the audio leads the mouth by ``offset`` frames.
Errors are plain Python ones (missing file, wrong file, missing package); the stage turns them into
its own recorded reasons.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np


@dataclass
class SyncScore:
    offset: int  # frames; > 0: audio leads
    confidence: float
    curve: np.ndarray  # score per offset -vshift..vshift (correlation for mouth, distance for syncnet)


# ---------------------------------------------------------------------------------------------
# the offset search


def score(video: np.ndarray, audio: np.ndarray, backend: str, vshift: int = 15, min_mouth_std: float = 0.0) -> SyncScore:
    """Offset and confidence of one stretch: ``video`` (n, D) features of one face, ``audio`` (n, D')."""
    if backend == "syncnet":
        return _score_distance(video, audio, vshift)
    return _score_correlation(np.asarray(video).reshape(len(video), -1), np.asarray(audio).reshape(len(audio), -1), vshift, min_mouth_std)


def _score_correlation(lips: np.ndarray, pred: np.ndarray, vshift: int, min_std: float) -> SyncScore:
    """Mean over the D columns of the Pearson correlation of ``lips[t]`` (n, D, measured) with
    ``pred[t - k]`` (n, D, predicted from the audio) for k in -vshift..vshift over the frames both
    have; the peak is the offset and its height the confidence (the ``lips`` backend,
    ``geometry/lip_audio.py``). Column 0 is the inner-lip gap: a gap that varies less than
    ``min_std`` is a frozen mouth, confidence 0."""
    n = len(lips)
    shifts = np.arange(-vshift, vshift + 1)
    curve = np.zeros(len(shifts))
    ok_lips = ~np.isnan(lips).any(1)
    if ok_lips.sum() < max(10, n // 2) or np.nanstd(lips[:, 0]) < min_std:
        return SyncScore(0, 0.0, curve)  # no face for most of it, or a frozen mouth
    for i, k in enumerate(shifts):
        m, e = (lips[k:], pred[: n - k]) if k >= 0 else (lips[: n + k], pred[-k:])
        ok = ~np.isnan(m).any(1) & ~np.isnan(e).any(1)
        if ok.sum() < 10:
            continue
        m, e = m[ok] - m[ok].mean(0), e[ok] - e[ok].mean(0)
        norm = np.sqrt((m * m).sum(0) * (e * e).sum(0))
        curve[i] = float(np.mean(np.where(norm > 0, (m * e).sum(0) / np.where(norm > 0, norm, 1), 0.0)))
    if not curve.any():  # nothing overlapped (silence under the face): no evidence either way
        return SyncScore(0, 0.0, curve)
    best = int(curve.argmax())
    return SyncScore(int(shifts[best]), round(max(0.0, float(curve[best])), 4), curve)


def _score_distance(im_feat: np.ndarray, cc_feat: np.ndarray, vshift: int) -> SyncScore:
    """syncnet_python's offset search (``calc_pdist`` and ``evaluate``): for every frame i, the
    distance of the lip feature i to the audio features i-vshift … i+vshift (zero rows past the
    ends); mean over frames per offset; offset = vshift − argmin, confidence = median − min."""
    import torch

    f1, f2 = torch.from_numpy(np.asarray(im_feat, np.float32)), torch.from_numpy(np.asarray(cc_feat, np.float32))
    win = 2 * vshift + 1
    f2p = torch.nn.functional.pad(f2, (0, 0, vshift, vshift))
    dists = torch.stack([torch.nn.functional.pairwise_distance(f1[[i], :].repeat(win, 1), f2p[i: i + win, :]) for i in range(len(f1))], 1)
    mdist = dists.mean(1)
    minval, minidx = torch.min(mdist, 0)
    return SyncScore(int(vshift - minidx), round(float(torch.median(mdist) - minval), 4), mdist.numpy())


def frame_power_spectra(audio: np.ndarray, sr: int, fps: float, num_frames: int, block: int = 2048):
    """Power spectra of the audio around each video frame (a Hann window of two frame lengths
    centred on the frame), ``block`` frames at a time: yields ``(first frame, (n, bins) spectra)``;
    the bins' frequencies are ``np.fft.rfftfreq(spectrum_window(sr, fps), 1 / sr)``. ``audio`` may
    be int16 (taken as /32768, the float a wav reader gives) or float, and a memory map: an hour of
    audio costs tens of MB here, not gigabytes."""
    hop = sr / fps
    win = spectrum_window(sr, fps)
    window = np.hanning(win)
    x = audio if audio.ndim == 1 else np.asarray(audio).mean(axis=1)
    scale = 1.0 / 32768.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    # window starts on the audio padded with ``win`` zeros on both sides, as frame-centred windows need
    padded = len(x) + 2 * win
    starts = np.clip((np.arange(num_frames) * hop + hop / 2 - win / 2 + win).astype(int), 0, padded - win) - win
    for b0 in range(0, num_frames, block):
        s = starts[b0: b0 + block]
        lo, hi = max(0, int(s.min())), min(len(x), int(s.max()) + win)
        seg = np.zeros(hi - lo + 2 * win, np.float64)  # this block's stretch, zero-padded like the whole
        if hi > lo:
            seg[win: win + hi - lo] = np.asarray(x[lo:hi], np.float64) * scale
        frames = seg[(s - lo + win)[:, None] + np.arange(win)] * window
        yield b0, np.abs(np.fft.rfft(frames, axis=1)) ** 2


def spectrum_window(sr: int, fps: float) -> int:
    """Samples in the window of ``frame_power_spectra``: two video frames."""
    return int(round(2 * sr / fps))


def speech_band_rms(audio: np.ndarray, sr: int, fps: float, num_frames: int, band: tuple[float, float] = (300.0, 3400.0),
                    block: int = 2048) -> np.ndarray:
    """(num_frames,) RMS of the speech band of ``audio`` in each video frame (``frame_power_spectra``),
    so music bass and hiss weigh little."""
    win = spectrum_window(sr, fps)
    freqs = np.fft.rfftfreq(win, 1.0 / sr)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    out = np.empty(num_frames, np.float32)
    for b0, spec in frame_power_spectra(audio, sr, fps, num_frames, block):
        out[b0: b0 + len(spec)] = np.sqrt(spec[:, keep].sum(axis=1) / win)
    return out


def _syncnet_class():
    """``S`` from the syncnet-python package's ``SyncNetModel.py``, loaded by file: the package's
    ``__init__`` imports its whole pipeline, which needs scenedetect < 0.7 (this project uses 0.7)."""
    spec = importlib.util.find_spec("syncnet_python")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SyncNet needs the syncnet-python package (make setup installs it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SyncNetModel.py")
    mod_spec = importlib.util.spec_from_file_location("cnas_syncnet_model", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.S


class SyncNetModel:
    """The SyncNet model loaded from ``syncnet_v2.model`` (a state dict of syncnet_python's ``S``,
    copied in parameter by parameter as its ``loadParameters`` does)."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch

        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"SyncNet weights not found: {path!r} (syncnet_v2.model from syncnet_python)")
        self.net = _syncnet_class()(num_layers_in_fc_layers=1024)
        state = self.net.state_dict()
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        unknown = sorted(set(loaded) - set(state))
        if unknown:
            raise ValueError(f"{path} is not a SyncNet state dict (unexpected keys such as {unknown[0]!r})")
        for name, param in loaded.items():
            state[name].copy_(param)
        self.device = device
        self.net.to(device).eval()

    def audio_features(self, audio16k: np.ndarray, num_frames: int, batch_size: int = 20) -> np.ndarray:
        """(num_frames, 1024) audio embeddings; frame i sees MFCC steps 4i … 4i+19 (zeros past the end).
        Float audio in [−1, 1] is taken as 16-bit PCM first: syncnet_python computes its MFCCs on the
        integers of a PCM-16 wav, and the log energies (hence c0) depend on that scale."""
        import python_speech_features
        import torch

        pcm = np.asarray(audio16k)
        if pcm.dtype.kind == "f":
            pcm = np.clip(np.round(pcm.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
        mfcc = python_speech_features.mfcc(pcm, 16000).T  # (13, steps) at 100 Hz
        need = 4 * num_frames + 20
        mfcc = np.pad(mfcc, ((0, 0), (0, max(0, need - mfcc.shape[1]))))
        cct = torch.from_numpy(mfcc[None, None].astype(np.float32))
        out = []
        with torch.no_grad():
            for i in range(0, num_frames, batch_size):
                batch = torch.cat([cct[:, :, :, f * 4: f * 4 + 20] for f in range(i, min(num_frames, i + batch_size))], 0)
                out.append(self.net.forward_aud(batch.to(self.device)).cpu().numpy())
        return np.concatenate(out, 0) if out else np.zeros((0, 1024), np.float32)

    def lip_features(self, crops_bgr: np.ndarray, batch_size: int = 20) -> np.ndarray:
        """(n, 1024) lip embeddings of (n, 224, 224, 3) BGR face crops; row i sees crops i … i+4
        (the last four rows repeat the last full window)."""
        import torch

        n = len(crops_bgr)
        if n < 5:
            return np.full((n, 1024), np.nan, np.float32)
        im = torch.from_numpy(np.ascontiguousarray(np.transpose(crops_bgr, (3, 0, 1, 2))[None]).astype(np.float32))  # 1,3,n,224,224
        out = []
        with torch.no_grad():
            for i in range(0, n - 4, batch_size):
                batch = torch.cat([im[:, :, f: f + 5] for f in range(i, min(n - 4, i + batch_size))], 0)
                out.append(self.net.forward_lip(batch.to(self.device)).cpu().numpy())
        feats = np.concatenate(out, 0)
        return np.concatenate([feats, np.repeat(feats[-1:], 4, 0)], 0)


def syncnet_crop(frame_bgr: np.ndarray, box: np.ndarray, crop_scale: float = 0.4) -> np.ndarray:
    """syncnet_python's face crop (``crop_video`` in run_pipeline.py): pad the frame by the box size,
    take from the box centre ``bs`` up and ``bs·(1+2·cs)`` down, ``bs·(1+cs)`` to each side, 224×224."""
    import cv2

    bs = max(box[2] - box[0], box[3] - box[1]) / 2
    bsi = int(bs * (1 + 2 * crop_scale))
    frame = np.pad(frame_bgr, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
    my, mx = (box[1] + box[3]) / 2 + bsi, (box[0] + box[2]) / 2 + bsi
    face = frame[int(my - bs): int(my + bs * (1 + 2 * crop_scale)), int(mx - bs * (1 + crop_scale)): int(mx + bs * (1 + crop_scale))]
    return cv2.resize(face, (224, 224))
