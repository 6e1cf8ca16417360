"""FLAME stage: DECA's coarse encoder (ResNet-50 → 236 codes) on face crops, a FLAME layer in
PyTorch, per-clip identity and temporally smoothed per-frame parameters. Ray-free.

Assets are the user's (FLAME and DECA need registration): ``generic_model.pkl`` (FLAME 2020 or
2023; it pickles chumpy objects — loaded here without chumpy), ``landmark_embedding.npy`` and
``deca_model.tar``. Nothing is made up when they are missing: ``check_flame_assets`` says what is
absent and the pipeline reports the stage as skipped.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StageError

SHAPE, TEX, EXP, POSE, CAM, LIGHT = 100, 50, 50, 6, 3, 27
CODE_SIZES = {"shape": SHAPE, "tex": TEX, "exp": EXP, "pose": POSE, "cam": CAM, "light": LIGHT}  # DECA's order
DECA_INPUT = 224
DECA_CROP_SCALE = 1.25

WHERE_TO_GET = {
    "flame_model": "FLAME 2020/2023 generic_model.pkl from https://flame.is.tue.mpg.de (free registration, non-commercial licence)",
    "landmark_embedding": "landmark_embedding.npy from the DECA repository's data/ folder (download script in DECA's README)",
    "deca_checkpoint": "deca_model.tar from the DECA project (link in DECA's README; registration at the FLAME site)",
}


# ---------------------------------------------------------------------------------------------
# loading the official files


class _ChumpyStub:
    """Stands in for chumpy's ``Ch`` objects while unpickling; keeps the array they wrap."""

    def __init__(self, *args, **kwargs):
        self.x = args[0] if args else None

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"x": state})


class _FlameUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "chumpy":
            return _ChumpyStub
        return super().find_class(module, name)


def _array(value: Any) -> np.ndarray:
    if isinstance(value, _ChumpyStub):
        value = value.x if "x" in value.__dict__ else value.__dict__.get("a")
    if hasattr(value, "toarray"):  # scipy sparse (J_regressor)
        value = value.toarray()
    return np.asarray(value)


FLAME_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


def load_flame_pickle(path: str) -> dict[str, np.ndarray]:
    """The arrays of an official FLAME ``generic_model.pkl``, without chumpy installed."""
    if not os.path.isfile(path):
        raise StageError("missing_asset", f"FLAME model not found: {path} ({WHERE_TO_GET['flame_model']})")
    with open(path, "rb") as f:
        data = _FlameUnpickler(f, encoding="latin1").load()
    missing = [k for k in FLAME_KEYS if k not in data]
    if missing:
        raise StageError("bad_asset", f"{path} is not a FLAME model: missing {missing}")
    out = {k: _array(data[k]) for k in FLAME_KEYS}
    V = out["v_template"].shape[0]
    if out["shapedirs"].shape[:2] != (V, 3) or out["shapedirs"].shape[2] < SHAPE + EXP or out["posedirs"].shape[:2] != (V, 3):
        raise StageError("bad_asset", f"{path}: shapedirs {out['shapedirs'].shape} / posedirs {out['posedirs'].shape} do not fit {V} vertices")
    return out


def load_landmark_embedding(path: str) -> dict[str, np.ndarray]:
    """DECA's ``landmark_embedding.npy`` (a pickled dict, values numpy arrays or torch tensors)."""
    if not os.path.isfile(path):
        raise StageError("missing_asset", f"landmark embedding not found: {path} ({WHERE_TO_GET['landmark_embedding']})")
    data = np.load(path, allow_pickle=True, encoding="latin1")[()]
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in data.items()}


# ---------------------------------------------------------------------------------------------
# the FLAME layer


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


def load_flame_models(flame_model: str, deca_checkpoint: str, landmark_embedding: str | None, device: str = "cpu", batch_size: int = 32) -> FlameModels:
    from .flame_model import FlameLayer, load_deca_encoder

    flame = load_flame_pickle(flame_model)
    lmk = load_landmark_embedding(landmark_embedding) if landmark_embedding else None
    return FlameModels(encoder=load_deca_encoder(deca_checkpoint, device), flame=FlameLayer(flame, lmk).to(device), device=device, batch_size=batch_size)


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
    for name in ("exp", "pose", "cam"):
        out[name] = np.where(valid[:, None], smooth(parts[name], valid), 0.0).astype(np.float32)
    return out


def missing_flame_assets(flame_model: str | None, deca_checkpoint: str | None) -> list[str]:
    """Names of the assets the stage cannot run without."""
    return [n for n, p in (("flame_model", flame_model), ("deca_checkpoint", deca_checkpoint)) if not (p and os.path.isfile(p))]


def check_flame_assets(flame_model: str | None, deca_checkpoint: str | None, landmark_embedding: str | None) -> dict[str, str]:
    """``{asset: 'ok: <path>' | 'missing: <where to get it>'}`` for ``cnas assets check``."""
    report = {}
    for name, path in (("flame_model", flame_model), ("deca_checkpoint", deca_checkpoint), ("landmark_embedding", landmark_embedding)):
        if path and os.path.isfile(path):
            report[name] = f"ok: {path}"
        else:
            report[name] = f"missing{' (' + path + ')' if path else ''}: {WHERE_TO_GET[name]}"
    return report
