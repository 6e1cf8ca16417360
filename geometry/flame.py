"""The FLAME head model's files and DECA's code layout: constants, and loading the official
``generic_model.pkl`` (without chumpy) and DECA's ``landmark_embedding.npy``. numpy only; the
differentiable layer is in ``geometry.flame_layer`` (torch)."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from schemas.flame import CAM_DIM, EXP_DIM, POSE_DIM, SHAPE_DIM


class AssetError(Exception):
    """A model file is missing (``reason='missing_asset'``) or is not what it should be (``'bad_asset'``)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


#: DECA code sizes; shape/exp/pose/cam are the FLAME parameters the shards store (``schemas.flame``).
SHAPE, TEX, EXP, POSE, CAM, LIGHT = SHAPE_DIM, 50, EXP_DIM, POSE_DIM, CAM_DIM, 27
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
        raise AssetError("missing_asset", f"FLAME model not found: {path} ({WHERE_TO_GET['flame_model']})")
    with open(path, "rb") as f:
        data = _FlameUnpickler(f, encoding="latin1").load()
    missing = [k for k in FLAME_KEYS if k not in data]
    if missing:
        raise AssetError("bad_asset", f"{path} is not a FLAME model: missing {missing}")
    out = {k: _array(data[k]) for k in FLAME_KEYS}
    V = out["v_template"].shape[0]
    if out["shapedirs"].shape[:2] != (V, 3) or out["shapedirs"].shape[2] < SHAPE + EXP or out["posedirs"].shape[:2] != (V, 3):
        raise AssetError("bad_asset", f"{path}: shapedirs {out['shapedirs'].shape} / posedirs {out['posedirs'].shape} do not fit {V} vertices")
    return out


def load_landmark_embedding(path: str) -> dict[str, np.ndarray]:
    """DECA's ``landmark_embedding.npy`` (a pickled dict, values numpy arrays or torch tensors)."""
    if not os.path.isfile(path):
        raise AssetError("missing_asset", f"landmark embedding not found: {path} ({WHERE_TO_GET['landmark_embedding']})")
    data = np.load(path, allow_pickle=True, encoding="latin1")[()]
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in data.items()}
