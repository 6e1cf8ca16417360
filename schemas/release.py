"""Records of a metadata-only release and of rebuilding one (docs/release.md).

A metadata-only release ships no media: per clip a ``ClipSource`` (one line of
``<split>/clips.jsonl``) says where the clip came from and how to cut it again, and
``rebuild.json`` (``RebuildRecipe``) the options every clip was normalised and cut with.
``cnas rebuild`` writes one ``RebuildResult`` per clip into ``rebuild_report.jsonl``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Record
from .clip import CLIP_KEY_PATTERN, ClipRecord
from .shard import ALL_MEMBERS
from .source import SourceItem

_SHA256 = r"^[0-9a-f]{64}$"

#: A name from a release that becomes one path component (split, shard file): letters, digits,
#: ``.``, ``_``, ``-``; starts with a letter or digit; never ``..`` (a release is untrusted input).
SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

#: Members a metadata-only release may ship in its arrays tars.
ARRAY_MEMBER_NAMES = ("pose.npz", "flame.npz")


def check_safe_name(name: str, what: str = "name") -> str:
    """``name`` when it is one safe path component (``SAFE_NAME_PATTERN``, no ``..``); else ValueError."""
    if not isinstance(name, str) or not re.match(SAFE_NAME_PATTERN, name) or ".." in name:
        raise ValueError(f"{what} {name!r} is not a safe name (letters, digits, '.', '_', '-'; no '/', no '..')")
    return name


def _check_members(value: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(value) - set(ALL_MEMBERS))
    if unknown:
        raise ValueError(f"{what}: unknown members {unknown} (members: {', '.join(ALL_MEMBERS)})")
    return value


class RebuildRecipe(Record):
    """``rebuild.json`` of a metadata-only release: how the ingest run normalised and cut its clips."""

    name: str
    version: str
    normalize: dict[str, Any] = Field(description="the run's `normalize` options (stages.normalize.NormalizeOptions)")
    clips: dict[str, Any] = Field(description="the run's `clips` options (stages.clips.ClipOptions: crf, preset, encode threads)")
    download: dict[str, Any] = Field(default_factory=dict, description="the run's `download` options (the format height cap picks the same file)")
    ffmpeg_version: str | None = Field(None, description="first line of `ffmpeg -version` where the release was packaged")
    splits: list[str] = Field(description="split names; each has <split>/clips.jsonl")
    max_shard_count: int = Field(ge=1, description="samples per rebuilt shard")
    target_shard_mb: float = Field(gt=0, description="size of a rebuilt shard")
    with_arrays: bool = Field(False, description="pose.npz / flame.npz members are shipped in <split>/arrays/*.tar")

    @field_validator("splits", mode="before")
    @classmethod
    def _safe_splits(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("splits: a non-empty list of split names")
        for name in value:
            check_safe_name(name, "split")
        if len(set(value)) != len(value):
            raise ValueError(f"split names repeat: {value}")
        return value


class ClipSource(Record):
    """One clip of a metadata-only release: its source, times, crop, checksums and its record."""

    key: str = Field(pattern=CLIP_KEY_PATTERN)
    split: str = Field(pattern=SAFE_NAME_PATTERN)
    source: SourceItem = Field(description="the source as the run's sources file gave it (URL or path, kind, metadata)")
    original_id: str | None = Field(None, description="the platform's id of the video (yt-dlp), when downloaded")
    webpage_url: str | None = None
    source_sha256: str | None = Field(
        None, pattern=_SHA256, description="sha256 of the media file the run ingested; null: it was gone when the release was packaged")
    source_size_bytes: int | None = Field(None, ge=0)
    source_start_s: float = Field(description="clip start on the source's presentation timeline (normalised start_s + video_start_s)")
    source_end_s: float
    first_frame: int = Field(ge=0, description="first frame in the normalised video (constant clip.fps)")
    num_frames: int = Field(gt=0)
    crop_box: list[int] | None = Field(None, description="[x, y, side] in the normalised video's pixels (as clip.crop_box); null: full frame")
    crop_box_source: list[float] | None = Field(
        None, description="[x0, y0, x1, y1] bounding box of the clip's frame in the coded source frame's pixels (rotation and pixel aspect undone)")
    audio_shift_frames: int = Field(0, description="the clip's audio was taken this many frames earlier (sync stage)")
    member_sha256: dict[str, str] = Field(description="member suffix -> sha256 of the member in the run's shards")
    member_bytes: dict[str, int] = Field(description="member suffix -> size in bytes")
    arrays: list[str] = Field(default_factory=list, description="members shipped in this release's arrays tars (pose.npz, flame.npz)")
    clip: ClipRecord = Field(description="the clip's record: the json member (transcript, quality figures, provenance, normalisation)")

    @field_validator("split", mode="before")
    @classmethod
    def _safe_split(cls, value: Any) -> Any:
        return check_safe_name(value, "split")

    @field_validator("member_sha256")
    @classmethod
    def _digests(cls, value: dict[str, str]) -> dict[str, str]:
        for suffix, digest in _check_members(value, "member_sha256").items():
            if not re.match(_SHA256, digest):
                raise ValueError(f"member_sha256: {suffix}: {digest!r} is not a sha256 hex digest")
        return value

    @field_validator("member_bytes")
    @classmethod
    def _sizes(cls, value: dict[str, int]) -> dict[str, int]:
        for suffix, size in _check_members(value, "member_bytes").items():
            if size < 0:
                raise ValueError(f"member_bytes: {suffix}: negative size {size}")
        return value

    @field_validator("arrays")
    @classmethod
    def _array_names(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - set(ARRAY_MEMBER_NAMES))
        if bad:
            raise ValueError(f"arrays: unknown members {bad} (arrays: {', '.join(ARRAY_MEMBER_NAMES)})")
        return value

    @model_validator(mode="after")
    def _same_clip(self) -> "ClipSource":
        if self.clip.key != self.key or self.source.video_id != self.clip.video_id:
            raise ValueError(f"key {self.key!r} / video {self.source.video_id!r} differ from the clip record's "
                             f"{self.clip.key!r} / {self.clip.video_id!r}")
        return self


class RebuildResult(Record):
    """One line of ``rebuild_report.jsonl``: what ``cnas rebuild`` made of one clip."""

    key: str = Field(pattern=CLIP_KEY_PATTERN)
    split: str = Field(pattern=SAFE_NAME_PATTERN)
    video_id: str
    status: Literal["rebuilt", "differs", "unverified", "unavailable"] = Field(
        description="rebuilt: every member byte-identical to the release's checksums; differs: the source or a member differs; "
                    "unverified: cut, but the release recorded no checksum for some member (nothing to verify against); "
                    "unavailable: the source could not be fetched or normalised")
    reasons: list[str] = Field(default_factory=list, description="why a clip differs, is unverified or unavailable; notes for a rebuilt one")
    source_changed: bool = False
    source_sha256: str | None = Field(None, description="sha256 of the source file the rebuild used")
    differing_members: list[str] = Field(default_factory=list)
    missing_members: list[str] = Field(default_factory=list, description="members neither re-cut nor shipped (arrays of a release without them)")
    member_sha256: dict[str, str] = Field(default_factory=dict, description="sha256 of every member the rebuild wrote")
    in_shards: bool = Field(False, description="the rebuilt members went into OUT's shards")

    @field_validator("split", mode="before")
    @classmethod
    def _safe_split(cls, value: Any) -> Any:
        return check_safe_name(value, "split")
