"""Per-clip FLAME fit (the arrays are stored in flame.npz; this record describes and validates them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Record

SHAPE_DIM, EXP_DIM, POSE_DIM, CAM_DIM = 100, 50, 6, 3


#: The arrays of a clip's ``flame.npz`` member, as ``FlameFit`` names its fields.
NPZ_MEMBERS = ("shape", "exp", "pose", "cam", "valid")


class FlameFit(Record):
    """Identity shape (100,), per-frame expression (T,50), pose (T,6: global+jaw), camera (T,3), validity (T,).

    The FLAME stage validates every fit through this record before it writes ``flame.npz``, and the
    trainers' loader validates every ``flame.npz`` it reads (``from_arrays``).
    """

    num_frames: int = Field(gt=0)
    shape: list[float]
    exp: list[list[float]]
    pose: list[list[float]]
    cam: list[list[float]]
    valid: list[bool]
    backend: str = Field(description="e.g. 'deca' or 'deca+landmark-refine'")
    smoothing: str | None = None

    @model_validator(mode="after")
    def _shapes(self) -> "FlameFit":
        if len(self.shape) != SHAPE_DIM:
            raise ValueError(f"shape has {len(self.shape)} values, expected {SHAPE_DIM}")
        for name, rows, dim in (("exp", self.exp, EXP_DIM), ("pose", self.pose, POSE_DIM), ("cam", self.cam, CAM_DIM)):
            if len(rows) != self.num_frames:
                raise ValueError(f"{name} has {len(rows)} frames, expected {self.num_frames}")
            if any(len(r) != dim for r in rows):
                raise ValueError(f"{name} rows must have {dim} values")
        if len(self.valid) != self.num_frames:
            raise ValueError(f"valid has {len(self.valid)} frames, expected {self.num_frames}")
        return self

    @classmethod
    def from_arrays(cls, arrays, backend: str = "deca", smoothing: str | None = None) -> "FlameFit":
        """Validate the arrays of a ``flame.npz`` (a mapping of array-likes with ``tolist``); a
        missing member or a wrong shape is a ``ValueError`` naming it."""
        missing = [k for k in NPZ_MEMBERS if k not in arrays]
        if missing:
            raise ValueError(f"flame.npz lacks {missing}")
        lists = {k: arrays[k].tolist() for k in NPZ_MEMBERS}
        return cls(num_frames=len(lists["valid"]), backend=backend, smoothing=smoothing, **lists)
