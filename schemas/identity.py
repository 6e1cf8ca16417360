"""Face identity records: per-video track embeddings and the run's identity registry."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import Record

EMBEDDING_DIM = 128


class TrackEmbedding(Record):
    """Mean dlib face embedding of one face track of a video."""

    track: int = Field(ge=0, description="face track id (pose.npz faces_track)")
    frames: int = Field(ge=1, description="frames embedded")
    spread: float = Field(ge=0, description="mean distance of the frame embeddings to their mean")
    embedding: list[float]

    @field_validator("embedding")
    @classmethod
    def _dim(cls, v: list[float]) -> list[float]:
        if len(v) != EMBEDDING_DIM:
            raise ValueError(f"embedding has {len(v)} values, expected {EMBEDDING_DIM}")
        return v


class IdentityResult(Record):
    """What the identity stage records for one video."""

    tracks: list[TrackEmbedding] = Field(default_factory=list)


class Identity(Record):
    id: str = Field(pattern=r"^id[0-9]{4,}$")
    name: str | None = Field(None, description="from identities.csv")
    centroid: list[float]
    count: int = Field(ge=0, description="frames embedded into the centroid")
    videos: list[str] = Field(default_factory=list)
    tracks: list[str] = Field(default_factory=list, description="'<video_id>#<track>' of every face track folded into the centroid: "
                              "a re-run that meets them again leaves the identity as it is")


class IdentityRegistry(Record):
    """``identities.json`` next to the shards: every identity seen so far (runs continue it)."""

    match_distance: float = 0.45
    identities: list[Identity] = Field(default_factory=list)
