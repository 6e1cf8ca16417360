"""Emotion labels: the vocabulary both trainers use, and the emotion stage's per-clip estimate."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import Record

#: The emotion vocabulary (MEAD's eight), in the order of the trainers' label indices.
EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised", "fear", "disgusted", "contempt")


class EmotionEstimate(Record):
    """A clip's emotion pseudo-label from a classifier (the emotion stage): what a clip without a
    human label is trained with when ``confidence`` reaches the trainer's threshold."""

    label: str = Field(description="the most probable emotion (one of schemas.emotion.EMOTIONS)")
    confidence: float = Field(ge=0, le=1, description="the label's probability, averaged over the clip's windows")
    probabilities: dict[str, float] = Field(default_factory=dict, description="every emotion the classifier knows -> its mean probability")
    windows: int = Field(ge=1, description="motion windows the clip's estimate averages")
    source: str = Field(description="what made it: '<kind>:<sha256 of the classifier file, 16 hex>', e.g. 'flame-probe:3f2a…'")

    @field_validator("label")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in EMOTIONS:
            raise ValueError(f"emotion {v!r} is not one of {', '.join(EMOTIONS)}")
        return v
