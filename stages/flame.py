"""FLAME stage: DECA's coarse encoder (ResNet-50 → 236 codes) on face crops, a FLAME layer in
PyTorch, per-clip identity and temporally smoothed per-frame parameters. Ray-free.

Assets are the user's (FLAME and DECA need registration): ``generic_model.pkl`` (FLAME 2020 or
2023; it pickles chumpy objects — loaded here without chumpy), ``landmark_embedding.npy`` and
``deca_model.tar``. Nothing is made up when they are missing: ``check_flame_assets`` says what is
absent and the pipeline reports the stage as skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from pydantic import Field, model_validator

from geometry.flame import (CODE_SIZES, DECA_CROP_SCALE, DECA_INPUT, SHAPE, WHERE_TO_GET, AssetError, load_flame_pickle,
                            load_landmark_embedding)
from schemas import ClipSet, FlameFit, NormalizedMedia, RejectSpan
from schemas import shard as layout
from schemas.settings import Settings, runtime_field

from .errors import StageError
from .files import write_npz
from .pose import slice_pose


class FlameOptions(Settings):
    """Options of the FLAME stage (config section ``flame``)."""

    enabled: bool = Field(True, description="runs when the assets below exist; otherwise reported as skipped")
    flame_model: str | None = Field(None, description="FLAME 2020/2023 generic_model.pkl")
    deca_checkpoint: str | None = Field(None, description="DECA deca_model.tar")
    landmark_embedding: str | None = Field(None, description="DECA landmark_embedding.npy (optional: only for refinement/landmarks)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    batch_size: int = runtime_field(32, ge=1, description="face crops per DECA forward pass")
    smooth_window: int = Field(5, ge=3, description="Savitzky-Golay window over time (frames, odd)")
    smooth_order: int = Field(2, ge=1, description="Savitzky-Golay polynomial order (< smooth_window)")
    refine_steps: int = Field(60, ge=0, description="Adam steps fitting FLAME's landmarks to dlib's 68 iBUG points per clip (0: DECA only; needs landmark_embedding)")
    max_landmark_error_px: float = Field(12.0, gt=0, description="mean landmark reprojection error in the 224-px crop after refinement; more is flame_fit_poor")

    @model_validator(mode="after")
    def _savgol(self) -> "FlameOptions":
        if self.smooth_window % 2 == 0 or self.smooth_order >= self.smooth_window:
            raise ValueError(f"flame.smooth_window must be odd and above flame.smooth_order, got {self.smooth_window} and {self.smooth_order}")
        return self


# ---------------------------------------------------------------------------------------------
# DECA codes


def split_codes(codes) -> dict[str, Any]:
    """(B,236) → {shape, tex, exp, pose, cam, light} in DECA's order."""
    out, i = {}, 0
    for name, n in CODE_SIZES.items():
        out[name] = codes[:, i : i + n]
        i += n
    return out


# ---------------------------------------------------------------------------------------------
# crops, smoothing, per-clip fit


def face_crop_box(face_landmarks_xy: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """DECA's square crop from face landmarks in pixels: centre of the box, side 1.25 × its mean extent (×1.1)."""
    pts = face_landmarks_xy[~np.isnan(face_landmarks_xy).any(axis=1)]
    if len(pts) < 3:
        return None
    left, top = pts.min(axis=0)
    right, bottom = pts.max(axis=0)
    size = (right - left + bottom - top) / 2 * 1.1 * DECA_CROP_SCALE
    cx, cy = (left + right) / 2, (top + bottom) / 2
    return np.array([cx - size / 2, cy - size / 2, size], np.float32)


def crop_face(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """224×224 RGB float32 in [0,1] (CHW) cut from ``frame`` by ``box`` = (x, y, side); outside is black."""
    import cv2

    x, y, side = box
    scale = DECA_INPUT / side
    M = np.array([[scale, 0, -x * scale], [0, scale, -y * scale]], np.float32)
    crop = cv2.warpAffine(frame, M, (DECA_INPUT, DECA_INPUT), flags=cv2.INTER_LINEAR, borderValue=0)
    return crop.astype(np.float32).transpose(2, 0, 1) / 255.0


def smooth(x: np.ndarray, valid: np.ndarray, window: int = 5, order: int = 2) -> np.ndarray:
    """Zero-phase Savitzky–Golay smoothing along time over each run of valid frames: it removes
    DECA's frame-to-frame jitter without the lag a causal filter would add to lip motion."""
    from scipy.signal import savgol_filter

    out = x.copy()
    padded = np.concatenate([[False], valid, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a > window:
            out[a:b] = savgol_filter(x[a:b], window, order, axis=0)
    return out


@dataclass
class FlameModels:
    encoder: Any
    flame: Any
    device: str
    batch_size: int = 32
    smooth_window: int = 5
    smooth_order: int = 2
    refine_steps: int = 0


def load_flame_models(flame_model: str, deca_checkpoint: str, landmark_embedding: str | None, device: str = "cpu", batch_size: int = 32,
                      smooth_window: int = 5, smooth_order: int = 2, refine_steps: int = 0) -> FlameModels:
    """DECA's encoder and the FLAME layer on ``device``; a missing or wrong file is a ``StageError``."""
    from geometry.flame_layer import FlameLayer

    from .flame_model import load_deca_encoder

    try:
        flame = load_flame_pickle(flame_model)
        lmk = load_landmark_embedding(landmark_embedding) if landmark_embedding else None
    except AssetError as e:
        raise StageError(e.reason, e.message) from None
    return FlameModels(encoder=load_deca_encoder(deca_checkpoint, device), flame=FlameLayer(flame, lmk).to(device), device=device,
                       batch_size=batch_size, smooth_window=smooth_window, smooth_order=smooth_order,
                       refine_steps=refine_steps if lmk is not None else 0)


def setup_flame(opts: FlameOptions) -> FlameModels:
    """The stage's models from its options (``device: auto`` picks CUDA when there is one)."""
    import torch

    device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return load_flame_models(opts.flame_model, opts.deca_checkpoint, opts.landmark_embedding, device, opts.batch_size,
                             opts.smooth_window, opts.smooth_order, opts.refine_steps)


def fit_clip(models: FlameModels, frames: list[np.ndarray | None], boxes: list[np.ndarray | None]) -> dict[str, np.ndarray]:
    """FLAME parameters of a clip: ``shape`` (100,) = median over valid frames (robust identity),
    ``exp`` (T,50), ``pose`` (T,6), ``cam`` (T,3) smoothed over time, ``valid`` (T,). Frames without
    a face are zeros with ``valid = False``."""
    import torch

    T = len(frames)
    valid = np.array([f is not None and b is not None for f, b in zip(frames, boxes)])
    codes = np.zeros((T, sum(CODE_SIZES.values())), np.float32)
    idx = np.flatnonzero(valid)
    with torch.no_grad():
        for i in range(0, len(idx), models.batch_size):
            chunk = idx[i : i + models.batch_size]
            batch = torch.from_numpy(np.stack([crop_face(frames[t], boxes[t]) for t in chunk])).to(models.device)
            codes[chunk] = models.encoder(batch).float().cpu().numpy()
    parts = split_codes(codes)
    shape = np.median(parts["shape"][valid], axis=0) if valid.any() else np.zeros(SHAPE, np.float32)
    out = {"shape": shape.astype(np.float32), "valid": valid}
    if models.refine_steps and valid.any():
        targets = np.stack([ibug68_in_crop(frames[t], boxes[t]) for t in idx])
        refined, before, after = refine_clip(models, shape, {k: parts[k][idx] for k in ("exp", "pose", "cam")}, targets)
        for k in ("exp", "pose", "cam"):
            parts[k] = parts[k].copy()
            parts[k][idx] = refined[k]
        out["landmark_error_px"] = np.array([before, after], np.float32)  # mean over the clip, before/after refinement
    for name in ("exp", "pose", "cam"):
        out[name] = np.where(valid[:, None], smooth(parts[name], valid, models.smooth_window, models.smooth_order), 0.0).astype(np.float32)
    return out


def ibug68_in_crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 iBUG landmarks of the face in DECA crop ``box`` (x, y, side), in DECA's normalised
    crop coordinates ([-1, 1], y down). The predictor gets the face's own extent (the crop without
    DECA's 1.25 × 1.1 margin), as its training detector boxes were."""
    import dlib
    import face_recognition_models as frm

    predictor = _ibug_predictor(frm.pose_predictor_model_location())
    x, y, side = (float(v) for v in box)
    face = side / (DECA_CROP_SCALE * 1.1)
    cx, cy = x + side / 2, y + side / 2
    rect = dlib.rectangle(int(cx - face / 2), int(cy - face / 2), int(cx + face / 2), int(cy + face / 2))
    shape = predictor(np.ascontiguousarray(frame), rect)
    pts = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
    return (pts - [x, y]) / side * 2.0 - 1.0


_PREDICTORS: dict[str, Any] = {}


def _ibug_predictor(path: str):
    import dlib

    if path not in _PREDICTORS:
        _PREDICTORS[path] = dlib.shape_predictor(path)
    return _PREDICTORS[path]


def refine_clip(models: FlameModels, shape: np.ndarray, params: dict[str, np.ndarray], targets: np.ndarray) -> tuple[dict[str, np.ndarray], float, float]:
    """Refine the valid frames' exp, pose and cam so FLAME's landmarks meet ``targets`` (N, 68, 2):
    returns the refined arrays and the mean reprojection error before and after, in 224-px crop pixels.
    A 51-point landmark embedding (no jaw contour) is fitted to iBUG points 17–67."""
    import torch

    from .flame_model import refine_with_landmarks

    dev = models.device
    n = len(targets)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32)).to(dev)  # noqa: E731
    sh, exp, pose, cam = t(np.repeat(shape[None], n, 0)), t(params["exp"]), t(params["pose"]), t(params["cam"])
    L = len(models.flame.lmk_faces_idx)
    target = t(targets[:, -L:])
    with torch.no_grad():
        from geometry.flame_layer import project_orthographic

        _, lmk = models.flame(sh, exp, pose)
        before = float((project_orthographic(lmk, cam) - target).norm(dim=-1).mean())
    exp, pose, cam, after = refine_with_landmarks(models.flame, sh, exp, pose, cam, target, steps=models.refine_steps)
    half = DECA_INPUT / 2  # normalised crop units -> crop pixels
    return ({"exp": exp.cpu().numpy(), "pose": pose.cpu().numpy(), "cam": cam.cpu().numpy()}, before * half, after * half)


def fit_video_clips(models: FlameModels, video_path: str, width: int, height: int, face_meshes: Iterable[np.ndarray],
                    ranges: list[tuple[int, int]]) -> Iterator[dict[str, np.ndarray]]:
    """``fit_clip`` for every frame range ``[a, b)`` of a video, decoding it once.

    ``face_meshes`` yields, clip by clip, the (b - a, 478, 3) face mesh in [0, 1] of the clip's
    speaker (the pose stage's landmarks of that face track; a generator keeps one in memory);
    ``ranges`` are in time order and do not overlap, so only one clip's frames are held in memory.
    """
    from .frames import read_frames

    size = np.array([width, height], np.float32)
    frames_iter = enumerate(read_frames(video_path, width, height))
    for mesh, (a, b) in zip(face_meshes, ranges):
        if len(mesh) != b - a:
            raise StageError("pose_mismatch", f"the face mesh has {len(mesh)} frames, the clip [{a}, {b}) needs {b - a}")
        frames: dict[int, np.ndarray] = {}
        for t, rgb in frames_iter:
            if t >= a:
                frames[t] = rgb.copy()
            if t >= b - 1:
                break
        boxes = [face_crop_box(mesh[t - a, :, :2] * size, width, height) for t in range(a, b)]
        yield fit_clip(models, [frames.get(t) if boxes[t - a] is not None else None for t in range(a, b)], boxes)


def missing_flame_assets(flame_model: str | None, deca_checkpoint: str | None) -> list[str]:
    """Names of the assets the stage cannot run without."""
    return [n for n, p in (("flame_model", flame_model), ("deca_checkpoint", deca_checkpoint)) if not (p and os.path.isfile(p))]


def flame_unavailable(opts: FlameOptions) -> str | None:
    """Why the stage cannot run with these options (missing assets), or None."""
    missing = missing_flame_assets(opts.flame_model, opts.deca_checkpoint)
    return f"missing assets: {', '.join(missing)} (see `cnas assets check`)" if missing else None


def check_flame_assets(flame_model: str | None, deca_checkpoint: str | None, landmark_embedding: str | None) -> dict[str, str]:
    """``{asset: 'ok: <path>' | 'missing: <where to get it>'}`` for ``cnas assets check``."""
    report = {}
    for name, path in (("flame_model", flame_model), ("deca_checkpoint", deca_checkpoint), ("landmark_embedding", landmark_embedding)):
        if path and os.path.isfile(path):
            report[name] = f"ok: {path}"
        else:
            report[name] = f"missing{' (' + path + ')' if path else ''}: {WHERE_TO_GET[name]}"
    return report


def flame_assets(opts: FlameOptions) -> dict[str, str]:
    """``check_flame_assets`` of the options for ``cnas assets check``; the landmark embedding is optional."""
    report = check_flame_assets(opts.flame_model, opts.deca_checkpoint, opts.landmark_embedding)
    if report["landmark_embedding"].startswith("missing"):
        report["landmark_embedding"] = "optional, " + report["landmark_embedding"]
    return report


def fit_clip_set(models: FlameModels, video_path: str, media: NormalizedMedia, clip_set: ClipSet, pose: dict[str, np.ndarray],
                 clip_dir: str, max_landmark_error_px: float) -> ClipSet:
    """DECA → FLAME for every clip of a video's ``ClipSet`` (a deep copy is returned), decoding the
    video once; each fit is written as the clip's ``flame.npz`` member. A clip whose refined fit
    misses its landmarks by more than ``max_landmark_error_px`` is rejected (``flame_fit_poor``)."""
    out = clip_set.model_copy(deep=True)
    if not out.clips:
        return out
    ranges = [(round(c.start_s * media.fps), round(c.start_s * media.fps) + c.num_frames) for c in out.clips]
    meshes = (slice_pose(pose, a, b, c.sync.face_track if c.sync else None)["face"] for c, (a, b) in zip(out.clips, ranges))
    kept = []
    for clip, fit in zip(out.clips, fit_video_clips(models, video_path, media.width, media.height, meshes, ranges)):
        errors = fit.pop("landmark_error_px", None)
        if errors is not None:
            clip.quality["flame_landmark_error_px_deca"] = round(float(errors[0]), 3)
            clip.quality["flame_landmark_error_px"] = round(float(errors[1]), 3)
            if errors[1] > max_landmark_error_px:  # the fit does not follow this face
                out.rejects["flame_fit_poor"] = out.rejects.get("flame_fit_poor", 0) + 1
                out.rejected_s["flame_fit_poor"] = round(out.rejected_s.get("flame_fit_poor", 0.0) + clip.end_s - clip.start_s, 3)
                out.reject_spans.append(RejectSpan(start_s=clip.start_s, end_s=clip.end_s, reason="flame_fit_poor", face_track=clip.face_track))
                continue
        kept.append(clip)
        FlameFit.from_arrays(fit)  # the shapes of the contract, before anything is written
        write_npz(os.path.join(clip_dir, layout.member_name(clip.key, layout.FLAME)), fit)
        clip.members.append(layout.FLAME)
        clip.quality["flame_valid_ratio"] = round(float(fit["valid"].mean()), 4)
    out.clips = kept
    return out
