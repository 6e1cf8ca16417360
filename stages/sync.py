"""Audio-visual sync: is the face on screen the one whose voice is heard, and how far apart are they?

Two backends give per-frame *video features* for every tracked face and per-frame *audio features*;
the same offset search scores any stretch of frames:

* ``lips`` (default, offline, no neural network): the video feature is three lip measures of the
  face mesh (inner-lip gap, outer lip height and width over the eye-corner distance); the audio
  feature is the same three measures predicted from the log-mel spectrum by a ridge regression
  fitted on real recordings (``geometry/lip_audio.py``). The score of an offset is the mean Pearson
  correlation of measured and predicted series; confidence = the peak's r.
* ``syncnet``: the SyncNet lip and audio embeddings (``syncnet_v2.model`` by path, the
  architecture of syncnet_python as the ``syncnet-python`` package ships it), computed as
  syncnet_python's ``SyncNetInstance.evaluate`` does: 224×224 BGR face crops in 5-frame windows,
  13 MFCCs at 100 Hz (``python_speech_features.mfcc``) in 20-step windows, mean pairwise distance per
  offset over ±``vshift`` with zero padding; offset = vshift − argmin, confidence = median − min.

Offset convention (SyncNet's): ``offset > 0`` means the sound comes ``offset`` frames *before* the
mouth movement that makes it (the audio leads); delaying the audio by ``offset`` frames fixes it.

Ray-free: the pipeline's sync stage calls ``sync_features`` per video and the clip stage calls
``score`` / ``speaking_frames`` on the stored features. The model, the crop and the offset search
live in ``geometry/syncnet.py``, which trainer 2's Sync-C/Sync-D uses too.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from pydantic import Field

from schemas.settings import Settings, runtime_field

from geometry.syncnet import SyncNetModel, SyncScore, score, speech_band_rms, syncnet_crop  # noqa: F401  (re-exported)
from geometry.syncnet import _syncnet_class as _model_class
from geometry.landmarks import EYE_CORNERS, INNER_LIP_MID, LIPS
from geometry.lip_audio import MODEL_PATH as LIP_MODEL_PATH, LipAudioModel, lip_features, log_mel

from .errors import StageError

BACKENDS = ("lips", "syncnet")


class SyncOptions(Settings):
    """Options of the sync stage and of the clip decisions it drives (config section ``sync``)."""

    enabled: bool = True
    backend: str = Field("lips", pattern=r"^(lips|syncnet)$", description="lips: lip shape predicted from the log-mel spectrum (geometry/lip_audio.py); syncnet: syncnet_v2.model by path")
    syncnet_model: str | None = Field(None, description="path of syncnet_v2.model (backend syncnet)")
    vshift: int = Field(15, ge=1, le=50, description="offsets searched: ±vshift frames")
    max_shift_frames: int = Field(2, ge=0, description="|offset| up to this: the clip's audio is shifted by the offset")
    max_offset_frames: int = Field(4, ge=0, description="|offset| beyond this: rejected as av_unsynced (160 ms: 3–4× the EBU R37 broadcast tolerance; real in-sync clips measure within ±3)")
    min_confidence: float = Field(0.3, ge=0, description="clip confidence at or above this: the face speaks the clip's audio (verdict pass)")
    fail_below: float = Field(0.2, ge=0, description="clip confidence below this: rejected as voice_over (a dub, a voice over a face that does not say it); between this and min_confidence the verdict is unverified")
    unverified: str = Field("keep", pattern=r"^(keep|reject)$", description="what happens to an unverified clip: kept with verdict unverified (default, docs/sync.md) or rejected as sync_unverified")
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


def sync_assets(opts: SyncOptions) -> dict[str, str]:
    """The SyncNet weights for ``cnas assets check``: needed by ``backend: syncnet`` only."""
    why = sync_unavailable(opts)
    if why:
        return {"syncnet_model": f"missing: {why.removeprefix('missing assets: ')}"}
    return {"syncnet_model": f"ok: {opts.syncnet_model}" if opts.backend == "syncnet" else f"optional: not used by backend {opts.backend}"}


# ---------------------------------------------------------------------------------------------
# features


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
    takes the mean confidence of the windows that cover it (0 for a window whose |offset| is over
    ``max_offset_frames``) and the offset of the best of them. The mean, not the best: a window
    that reaches into another speaker's turn would carry a good score past the change of voice."""
    T, K = faces_track.shape
    conf = np.zeros((T, K), np.float32)
    offset = np.zeros((T, K), np.int32)
    W = opts.window_frames
    for track in np.unique(faces_track[faces_track >= 0]):
        frames = np.flatnonzero((faces_track == track).any(axis=1))
        a, b = frames[0], frames[-1] + 1
        total = np.zeros(b - a, np.float32)
        covered = np.zeros(b - a, np.int32)
        best = np.full(b - a, -1.0, np.float32)
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
            c = sc.confidence if abs(sc.offset) <= opts.max_offset_frames else 0.0
            total[s - a: e - a] += c
            covered[s - a: e - a] += 1
            better = c > best[s - a: e - a]
            best[s - a: e - a][better] = c
            best_off[s - a: e - a][better] = sc.offset
        mean = np.where(covered > 0, total / np.maximum(covered, 1), 0.0)
        hit = faces_track[a:b] == track
        rows, slots = np.nonzero(hit)
        conf[a + rows, slots] = mean[rows]
        offset[a + rows, slots] = best_off[rows]
    return conf, offset


# ---------------------------------------------------------------------------------------------
# syncnet backend


def _syncnet_class():
    """syncnet_python's ``S`` (``geometry.syncnet``), a missing package recorded as the stage's reason."""
    try:
        return _model_class()
    except ImportError as e:
        raise StageError("missing_dependency", str(e)) from None


class SyncNet(SyncNetModel):
    """``geometry.syncnet.SyncNetModel`` whose loading errors are the sync stage's recorded reasons."""

    def __init__(self, path: str, device: str = "cpu"):
        try:
            super().__init__(path, device)
        except FileNotFoundError as e:
            raise StageError("missing_asset", f"{e} (sync.syncnet_model)") from None
        except ValueError as e:
            raise StageError("bad_asset", str(e)) from None
        except ImportError as e:
            raise StageError("missing_dependency", str(e)) from None


def sync_features(audio: np.ndarray, sr: int, fps: float, pose: dict[str, np.ndarray], opts: SyncOptions,
                  model: SyncNet | None = None, frames=None) -> dict[str, np.ndarray]:
    """Per-video features and active-speaker evidence: ``video`` (T, K, D) in the pose's face slots,
    ``audio`` (T, D), ``speaking_conf`` / ``speaking_offset`` (T, K), ``faces_track`` (T, K).

    ``lips`` needs only the pose arrays (the face meshes); ``syncnet`` also needs the model and ``frames`` (an
    iterator of the video's RGB frames) and 16 kHz audio.
    """
    T = len(pose["faces_track"])
    faces_track = np.asarray(pose["faces_track"])
    if opts.backend == "lips":
        video = _lip_measures(pose)
        aud = lip_model().predict(log_mel(audio, sr, fps, T))
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


@functools.lru_cache(maxsize=1)
def lip_model() -> LipAudioModel:
    """The shipped lip-from-audio regression (once per process)."""
    try:
        return LipAudioModel.load(LIP_MODEL_PATH)
    except FileNotFoundError:
        raise StageError("missing_asset", f"{LIP_MODEL_PATH} (the lips backend's regression; reinstall the package)") from None


def _lip_measures(pose: dict[str, np.ndarray], block: int = 4096) -> np.ndarray:
    """(T, K, 3) lip measures of every face slot, a block of frames at a time (the meshes may be a
    memory map of an hour of video)."""
    faces = pose["faces"]
    width, height = (int(v) for v in pose["frame_size"])
    keep = sorted(set(LIPS) | set(EYE_CORNERS) | set(INNER_LIP_MID))
    out = np.empty((*faces.shape[:2], 3), np.float32)
    for b0 in range(0, len(faces), block):
        part = np.full((*faces[b0:b0 + block].shape[:2], 478, 2), np.nan, np.float32)
        part[:, :, keep] = np.asarray(faces[b0:b0 + block][:, :, keep, :2])
        out[b0:b0 + block] = lip_features(part, width, height)
    return out


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
