"""A clip: the unit that becomes one WebDataset sample."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import SAFE_ID_PATTERN, Record
from .curation import ClipCuration
from .emotion import EmotionEstimate
from .source import SourceProvenance
from .speech import Transcript
from .sync import ClipSync

#: Sample key: ``<video_id>-<index:04d>``; no dots (WebDataset splits key and suffix at the first dot).
CLIP_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}-[0-9]{4,}$"


class SourceMedia(Record):
    """The source's media as probed, and what normalisation did to it (see ``NormalizeDecisions``)."""

    width: int | None = Field(None, description="coded width of the source video")
    height: int | None = None
    fps: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    rotation_deg: int = 0
    sample_aspect_ratio: float = 1.0
    interlaced: bool = False
    deinterlaced: bool = False
    tone_mapped: bool = False
    audio_track: int = 0
    video_start_s: float = Field(0.0, description="source time of the normalised t=0: a clip's source time is start_s + this")


class GateCheck(BaseModel):
    """What one accept/reject gate concluded about a clip: ``pass``, ``fail`` (the clip is then
    rejected for ``reason``) or ``unverified`` (the gate could not decide: nothing to measure, or a
    score between its fail and pass levels), with the score and the threshold it was held to."""

    model_config = ConfigDict(extra="forbid")

    verdict: str = Field(pattern=r"^(pass|fail|unverified)$")
    score: float | None = None
    threshold: float | None = None
    reason: str = Field(description="the reject reason this gate gives when it fails")

    @classmethod
    def measure(cls, value: float | None, threshold: float, reason: str, at_least: bool = True) -> "GateCheck":
        """``value`` held to ``threshold`` (a minimum; with ``at_least=False`` a maximum): unverified
        when nothing was measured (None or NaN)."""
        if value is None or value != value:
            return cls(verdict="unverified", threshold=threshold, reason=reason)
        ok = value >= threshold if at_least else value <= threshold
        return cls(verdict="pass" if ok else "fail", score=round(float(value), 5), threshold=threshold, reason=reason)


class ClipRecord(Record):
    """Metadata of one clip; this is the ``json`` member of a shard sample.

    Times are seconds in the normalised source. ``stages`` says which optional stages contributed
    (``speech``, ``pose``, ``flame``) and ``skipped_stages`` which were skipped and why.
    """

    key: str = Field(pattern=CLIP_KEY_PATTERN)
    clip_uid: str = Field(description="uuid5 of the source URI and the clip's times")
    video_id: str = Field(pattern=SAFE_ID_PATTERN)
    index: int = Field(ge=0)
    source_uri: str
    source_metadata: dict[str, Any] = Field(default_factory=dict)
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    source_duration_s: float = Field(gt=0)
    fps: float = Field(gt=0)
    num_frames: int = Field(gt=0)
    sample_rate_hz: int = Field(gt=0)
    num_audio_samples: int = Field(gt=0)
    width: int = Field(ge=2)
    height: int = Field(ge=2)
    language: str | None = None
    licence: str | None = None
    crop_box: list[int] | None = Field(default=None, description="[x, y, side] of the square crop in the normalised video; null = full frame")
    quality: dict[str, float] = Field(default_factory=dict, description="clip quality figures (face size, confidences, sharpness, speech ratio)")
    transcript: Transcript | None = None
    stages: list[str] = Field(default_factory=list)
    skipped_stages: dict[str, str] = Field(default_factory=dict)
    members: list[str] = Field(description="member suffixes of this sample in its shard, e.g. json, mp4, wav")
    sync: ClipSync | None = Field(None, description="speaker face track and audio-visual offset/confidence (sync stage)")
    checks: dict[str, GateCheck] = Field(default_factory=dict, description="every selection gate's verdict (pass / unverified) with its score and threshold, in the order applied")
    face_track: int | None = Field(None, description="face track id (pose.npz faces_track) of the clip's person: the sync speaker, else the primary face")
    identity: str | None = Field(None, description="identity id (identities.json next to the shards), same person in every video and run")
    identity_name: str | None = Field(None, description="the identity's name from identities.csv")
    identity_distance: float | None = Field(None, description="distance of the face track's embedding to the identity centroid (dlib 128-d; ≤ 0.6 = same person)")
    curation: ClipCuration | None = Field(None, description="burned-in text, subtitles, fingerprints and duplicate group (curate stage)")
    emotion_estimate: EmotionEstimate | None = Field(None, description="emotion pseudo-label with its confidence and source (emotion stage); "
                                                                       "a human label stays in source_metadata.emotion")
    provenance: SourceProvenance | None = Field(None, description="where the source came from (platform, channel, date, licence)")
    source_media: SourceMedia | None = None
    clip_to_source: list[list[float]] | None = Field(
        None, description="2x3 affine: clip pixel (x, y, 1) -> pixel of the coded source frame (crop, scale, pixel aspect, rotation undone)")

    @model_validator(mode="after")
    def _consistent(self) -> "ClipRecord":
        if self.end_s <= self.start_s:
            raise ValueError(f"clip ends ({self.end_s}) before it starts ({self.start_s})")
        if self.end_s > self.source_duration_s + 1e-3:
            raise ValueError(f"clip end {self.end_s} s is past the source end {self.source_duration_s} s")
        length_s = self.end_s - self.start_s
        if abs(self.num_frames / self.fps - length_s) > 1.0 / self.fps + 1e-6:
            raise ValueError(f"{self.num_frames} frames at {self.fps} fps do not span {length_s:.3f} s")
        if abs(self.num_audio_samples / self.sample_rate_hz - length_s) > 1.0 / self.sample_rate_hz + 1e-6:
            raise ValueError(f"{self.num_audio_samples} samples at {self.sample_rate_hz} Hz do not span {length_s:.3f} s")
        if not self.key.startswith(self.video_id + "-"):
            raise ValueError(f"key {self.key!r} does not start with the video id {self.video_id!r}")
        return self


class RejectSpan(Record):
    """A stretch of the normalised source that a clip filter turned down (an example for ``cnas inspect``)."""

    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    reason: str
    face_track: int | None = Field(None, description="the face track the rejected clip was about, when there was one")


class ClipSet(Record):
    """The clips of one video, as the clip stages record them, and the clip-level rejects."""

    clips: list[ClipRecord] = Field(default_factory=list)
    rejects: dict[str, int] = Field(default_factory=dict, description="reason -> clips (or stretches) rejected")
    rejected_s: dict[str, float] = Field(default_factory=dict, description="reason -> seconds rejected")
    speaker_faces: dict[str, list[int]] = Field(default_factory=dict, description="diarized speaker -> face tracks it was heard in sync with")
    reject_spans: list[RejectSpan] = Field(default_factory=list, description="examples of rejected stretches: the longest few of each reason")
