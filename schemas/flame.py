"""Per-clip FLAME fit (the arrays are stored in flame.npz; this record describes and validates them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Record

SHAPE_DIM, EXP_DIM, POSE_DIM, CAM_DIM = 100, 50, 6, 3


class FlameFit(Record):
    """Identity shape (100,), per-frame expression (T,50), pose (T,6: global+jaw), camera (T,3), validity (T,)."""

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
