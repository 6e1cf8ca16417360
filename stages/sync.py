"""Audio-visual sync: is the face on screen the one whose voice is heard, and how far apart are they?

Two backends give per-frame *video features* for every tracked face and per-frame *audio features*;
the same offset search scores any stretch of frames:

* ``mouth`` (default, model-free, offline): the video feature is the mouth opening of the face
  mesh (inner-lip gap over the eye-corner distance, from the pose stage); the audio feature is the
  speech-band (300–3400 Hz) RMS of the audio in each video frame's 40 ms. The score of an offset
  is the Pearson correlation of the two series; confidence = peak − median of the curve.
* ``syncnet``: the SyncNet lip and audio embeddings (``syncnet_v2.model`` by path, the
  architecture of syncnet_python as the ``syncnet-python`` package ships it), computed as
  syncnet_python's ``SyncNetInstance.evaluate`` does: 224×224 BGR face crops in 5-frame windows,
  13 MFCCs at 100 Hz (``python_speech_features.mfcc``) in 20-step windows, mean pairwise distance per
  offset over ±``vshift`` with zero padding; offset = vshift − argmin, confidence = median − min.

Offset convention (SyncNet's): ``offset > 0`` means the sound comes ``offset`` frames *before* the
mouth movement that makes it (the audio leads); delaying the audio by ``offset`` frames fixes it.

Ray-free: the pipeline's sync stage calls ``sync_features`` per video and the clip stage calls
``score`` / ``speaking_frames`` on the stored features.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from schemas.settings import Settings, runtime_field

from .errors import StageError

BACKENDS = ("mouth", "syncnet")


class SyncOptions(Settings):
    """Options of the sync stage and of the clip decisions it drives (config section ``sync``)."""

    enabled: bool = True
    backend: str = Field("mouth", pattern=r"^(mouth|syncnet)$", description="mouth: model-free lip/energy correlation; syncnet: syncnet_v2.model by path")
    syncnet_model: str | None = Field(None, description="path of syncnet_v2.model (backend syncnet)")
    vshift: int = Field(15, ge=1, le=50, description="offsets searched: ±vshift frames")
    max_shift_frames: int = Field(2, ge=0, description="|offset| up to this: the clip's audio is shifted by the offset")
    max_offset_frames: int = Field(5, ge=0, description="|offset| beyond this: rejected as av_unsynced")
    min_confidence: float = Field(0.5, ge=0, description="clip confidence below this: rejected as not_speaking (voice-over, dub, frozen face)")
    window_frames: int = Field(75, ge=10, description="active speaker: frames per scoring window (3 s: 2-s windows of dubs correlated by chance)")
    window_hop: int = Field(10, ge=1, description="active speaker: frames between window starts")
    min_mouth_std: float = Field(0.004, ge=0, description="a mouth whose opening varies less than this (eye-distance units) is frozen: confidence 0")
    batch_size: int = runtime_field(20, ge=1, description="syncnet: 5-frame windows per forward pass")
    device: str = runtime_field("cpu", description="syncnet: torch device")


def sync_unavailable(opts: SyncOptions) -> str | None:
    """Why the stage cannot run with these options (SyncNet weights missing), or None."""
    if opts.backend == "syncnet" and not (opts.syncnet_model and os.path.isfile(opts.syncnet_model)):
        return f"missing assets: sync.syncnet_model ({opts.syncnet_model or 'not set'}; syncnet_v2.model of syncnet_python)"
    return None


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
    return _score_correlation(video[:, 0] if video.ndim == 2 else video, audio[:, 0] if audio.ndim == 2 else audio, vshift, min_mouth_std)


def _score_correlation(mouth: np.ndarray, env: np.ndarray, vshift: int, min_std: float) -> SyncScore:
    """Pearson correlation of ``mouth[t]`` with ``env[t - k]`` for k in -vshift..vshift over the frames
    both have; the curve's peak is the offset, its height over the median the confidence."""
    n = len(mouth)
    shifts = np.arange(-vshift, vshift + 1)
    curve = np.zeros(len(shifts))
    ok_mouth = ~np.isnan(mouth)
    if ok_mouth.sum() < max(10, n // 2) or np.nanstd(mouth) < min_std:
        return SyncScore(0, 0.0, curve)  # no face for most of it, or a frozen mouth
    for i, k in enumerate(shifts):
        if k >= 0:
            m, e = mouth[k:], env[: n - k]
        else:
            m, e = mouth[: n + k], env[-k:]
        ok = ~np.isnan(m) & ~np.isnan(e)
        if ok.sum() < 10:
            continue
        m, e = m[ok], e[ok]
        sm, se = m.std(), e.std()
        curve[i] = float(((m - m.mean()) * (e - e.mean())).mean() / (sm * se)) if sm > 0 and se > 0 else 0.0
    if not curve.any():  # nothing overlapped (silence under the face): no evidence either way
        return SyncScore(0, 0.0, curve)
    best = int(curve.argmax())
    return SyncScore(int(shifts[best]), round(float(curve[best] - np.median(curve)), 4), curve)


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


# ---------------------------------------------------------------------------------------------
# features


def speech_band_rms(audio: np.ndarray, sr: int, fps: float, num_frames: int, band: tuple[float, float] = (300.0, 3400.0)) -> np.ndarray:
    """(num_frames,) RMS of the speech band of ``audio`` in each video frame (a Hann window of two
    frame lengths centred on the frame), so music bass and hiss weigh little."""
    hop = sr / fps
    win = int(round(2 * hop))
    window = np.hanning(win)
    freqs = np.fft.rfftfreq(win, 1.0 / sr)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    x = np.asarray(audio, np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    pad = np.concatenate([np.zeros(win), x, np.zeros(win)])
    starts = (np.arange(num_frames) * hop + hop / 2 - win / 2 + win).astype(int)
    starts = np.clip(starts, 0, len(pad) - win)
    frames = pad[starts[:, None] + np.arange(win)] * window
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.sqrt(spec[:, keep].sum(axis=1) / win).astype(np.float32)


def track_series(features: np.ndarray, faces_track: np.ndarray, track: int, start: int, end: int) -> np.ndarray:
    """Frames ``[start, end)`` of one face track's per-slot features ``(T, K, ...)`` (NaN where the
    track is not on screen): slots are storage places that may change per frame."""
    ids = np.asarray(faces_track[start:end])
    hit = ids == track
    slot = hit.argmax(axis=1)
    rows = np.asarray(features[start:end])[np.arange(end - start), slot].astype(np.float32)
    rows[~hit.any(axis=1)] = np.nan
    return rows


def speaking_frames(video: np.ndarray, audio: np.ndarray, faces_track: np.ndarray, opts: SyncOptions, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Active speaker evidence: ``(conf, offset)`` arrays ``(T, K)`` in the slots of ``faces_track``:
    for each face track, windows of ``window_frames`` (hop ``window_hop``) are scored and every frame
    takes the best confidence of the windows that cover it with ``|offset| ≤ max_offset_frames``."""
    T, K = faces_track.shape
    conf = np.zeros((T, K), np.float32)
    offset = np.zeros((T, K), np.int32)
    W = opts.window_frames
    for track in np.unique(faces_track[faces_track >= 0]):
        frames = np.flatnonzero((faces_track == track).any(axis=1))
        a, b = frames[0], frames[-1] + 1
        best = np.zeros(b - a, np.float32)
        best_off = np.zeros(b - a, np.int32)
        starts = list(range(a, max(a + 1, b - W + 1), opts.window_hop))
        if b - a >= W and starts[-1] != b - W:
            starts.append(b - W)
        v_track = track_series(video, faces_track, int(track), a, b)
        for s in starts:
            e = min(b, s + W)
            if e - s < min(W, 25):
                continue
            sc = score(v_track[s - a: e - a], audio[s:e], backend, opts.vshift, opts.min_mouth_std)
            if abs(sc.offset) > opts.max_offset_frames:
                continue
            better = sc.confidence > best[s - a: e - a]
            best[s - a: e - a][better] = sc.confidence
            best_off[s - a: e - a][better] = sc.offset
        hit = faces_track[a:b] == track
        rows, slots = np.nonzero(hit)
        conf[a + rows, slots] = best[rows]
        offset[a + rows, slots] = best_off[rows]
    return conf, offset


# ---------------------------------------------------------------------------------------------
# syncnet backend


def _syncnet_class():
    """``S`` from the syncnet-python package's ``SyncNetModel.py``, loaded by file: the package's
    ``__init__`` imports its whole pipeline, which needs scenedetect < 0.7 (this project uses 0.7)."""
    spec = importlib.util.find_spec("syncnet_python")
    if spec is None or not spec.submodule_search_locations:
        raise StageError("missing_dependency", "backend syncnet needs the syncnet-python package (make setup installs it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SyncNetModel.py")
    mod_spec = importlib.util.spec_from_file_location("cnas_syncnet_model", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.S


class SyncNet:
    """The SyncNet model loaded from ``syncnet_v2.model`` (a state dict of syncnet_python's ``S``,
    copied in parameter by parameter as its ``loadParameters`` does)."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch

        if not path or not os.path.isfile(path):
            raise StageError("missing_asset", f"SyncNet weights not found: {path!r} (sync.syncnet_model: syncnet_v2.model from syncnet_python)")
        self.net = _syncnet_class()(num_layers_in_fc_layers=1024)
        state = self.net.state_dict()
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        unknown = sorted(set(loaded) - set(state))
        if unknown:
            raise StageError("bad_asset", f"{path} is not a SyncNet state dict (unexpected keys such as {unknown[0]!r})")
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


def sync_features(audio: np.ndarray, sr: int, fps: float, pose: dict[str, np.ndarray], opts: SyncOptions,
                  model: SyncNet | None = None, frames=None) -> dict[str, np.ndarray]:
    """Per-video features and active-speaker evidence: ``video`` (T, K, D) in the pose's face slots,
    ``audio`` (T, D), ``speaking_conf`` / ``speaking_offset`` (T, K), ``faces_track`` (T, K).

    ``mouth`` needs only the pose arrays; ``syncnet`` also needs the model and ``frames`` (an
    iterator of the video's RGB frames) and 16 kHz audio.
    """
    T = len(pose["faces_track"])
    faces_track = np.asarray(pose["faces_track"])
    if opts.backend == "mouth":
        video = np.asarray(pose["faces_mouth"], np.float32)[..., None]
        aud = speech_band_rms(audio, sr, fps, T)[:, None]
    else:
        if model is None or frames is None:
            raise StageError("missing_asset", "backend syncnet needs the SyncNet model and the video frames")
        if sr != 16000:
            raise StageError("bad_audio", f"SyncNet's MFCCs expect 16 kHz audio, got {sr} Hz")
        if abs(fps - 25) > 0.01:
            raise StageError("bad_video", f"SyncNet expects 25 fps video (4 MFCC steps a frame), got {fps:g}")
        video = _syncnet_video_features(model, frames, pose, opts)
        aud = model.audio_features(np.asarray(audio), T, opts.batch_size)
    conf, offset = speaking_frames(video, aud, faces_track, opts, opts.backend)
    return {"video": video, "audio": aud, "speaking_conf": conf, "speaking_offset": offset, "faces_track": faces_track,
            "backend": np.array(opts.backend)}


def _syncnet_video_features(model: SyncNet, frames, pose: dict[str, np.ndarray], opts: SyncOptions) -> np.ndarray:
    """Lip embeddings per face slot and frame, from each track's crops in frame order."""
    boxes = np.asarray(pose["faces_box"])
    ids = np.asarray(pose["faces_track"])
    T, K = ids.shape
    crops: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    for t, rgb in enumerate(frames):
        if t >= T:
            break
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        for s in range(K):
            if ids[t, s] >= 0 and not np.isnan(boxes[t, s, 0]):
                crops.setdefault(int(ids[t, s]), []).append((t, s, syncnet_crop(bgr, boxes[t, s])))
    video = np.full((T, K, 1024), np.nan, np.float32)
    for track, items in crops.items():
        feats = model.lip_features(np.stack([c for _, _, c in items]), opts.batch_size)
        for (t, s, _), f in zip(items, feats):
            video[t, s] = f
    return video
