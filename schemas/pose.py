"""Per-frame part confidences and boxes from the pose stage (landmark arrays live in pose.npz)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Record

#: Parts whose confidences PAHA's parts-aware re-weighting reads, in this order.
PART_NAMES: tuple[str, ...] = ("face", "mouth", "left_hand", "right_hand", "torso")


class PoseTrack(Record):
    """Per-frame, per-part confidence in [0, 1] with a presence mask, and part boxes.

    ``part_confidences[t][p]`` is the confidence of part ``part_names[p]`` in frame ``t``; a part not
    found is confidence 0 with ``part_present[t][p] = False``. ``part_boxes[t][p]`` is
    ``[x0, y0, x1, y1]`` in pixels, or ``None`` when absent.
    """

    num_frames: int = Field(gt=0)
    fps: float = Field(gt=0)
    part_names: list[str] = Field(default_factory=lambda: list(PART_NAMES))
    part_confidences: list[list[float]]
    part_present: list[list[bool]]
    part_boxes: list[list[list[float] | None]] | None = None
    num_people: list[int] | None = None
    backend: str

    @model_validator(mode="after")
    def _shapes_and_ranges(self) -> "PoseTrack":
        n_parts = len(self.part_names)
        _check_frames(self.part_confidences, self.num_frames, "part_confidences")
        _check_frames(self.part_present, self.num_frames, "part_present")
        for t, (conf, present) in enumerate(zip(self.part_confidences, self.part_present)):
            if len(conf) != n_parts or len(present) != n_parts:
                raise ValueError(f"frame {t}: expected {n_parts} parts")
            for c, p in zip(conf, present):
                if not 0.0 <= c <= 1.0:
                    raise ValueError(f"frame {t}: confidence {c} is outside [0, 1]")
                if not p and c != 0.0:
                    raise ValueError(f"frame {t}: an absent part must have confidence 0, got {c}")
        if self.part_boxes is not None:
            _check_frames(self.part_boxes, self.num_frames, "part_boxes")
        if self.num_people is not None:
            _check_frames(self.num_people, self.num_frames, "num_people")
        return self


class PoseResult(Record):
    """What the pose stage records for one video: where its landmark arrays are (an uncompressed
    ``pose.npz`` in the work dir, memory-mapped by readers) and a summary of its part confidences."""

    path: str = Field(description="work-dir path or URI of the video's pose.npz")
    num_frames: int = Field(gt=0)
    mean_part_confidence: list[float] = Field(description="mean confidence per part, in PART_NAMES order")
    dense_s: float | None = Field(None, ge=0, description="seconds of video the dense models (mesh, body, hands) looked at")
    scan_s: float | None = Field(None, ge=0, description="seconds of video the cascade's face scan covered (0: no cascade)")
    candidate_spans: list[list[int]] | None = Field(None, description="cascade: [first, end) frames meshed; null: every frame")


def _check_frames(seq: list, num_frames: int, what: str) -> None:
    if len(seq) != num_frames:
        raise ValueError(f"{what} has {len(seq)} frames, expected {num_frames}")
