"""Records of a metadata-only release and of rebuilding one (docs/release.md).

A metadata-only release ships no media: per clip a ``ClipSource`` (one line of
``<split>/clips.jsonl``) says where the clip came from and how to cut it again, and
``rebuild.json`` (``RebuildRecipe``) the options every clip was normalised and cut with.
``cnas rebuild`` writes one ``RebuildResult`` per clip into ``rebuild_report.jsonl``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Record
from .clip import CLIP_KEY_PATTERN, ClipRecord
from .source import SourceItem

_SHA256 = r"^[0-9a-f]{64}$"


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


class ClipSource(Record):
    """One clip of a metadata-only release: its source, times, crop, checksums and its record."""

    key: str = Field(pattern=CLIP_KEY_PATTERN)
    split: str
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


class RebuildResult(Record):
    """One line of ``rebuild_report.jsonl``: what ``cnas rebuild`` made of one clip."""

    key: str = Field(pattern=CLIP_KEY_PATTERN)
    split: str
    video_id: str
    status: Literal["rebuilt", "differs", "unavailable"]
    reasons: list[str] = Field(default_factory=list, description="why a clip differs or is unavailable; notes for a rebuilt one")
    source_changed: bool = False
    source_sha256: str | None = Field(None, description="sha256 of the source file the rebuild used")
    differing_members: list[str] = Field(default_factory=list)
    missing_members: list[str] = Field(default_factory=list, description="members neither re-cut nor shipped (arrays of a release without them)")
    member_sha256: dict[str, str] = Field(default_factory=dict, description="sha256 of every member the rebuild wrote")
    in_shards: bool = Field(False, description="the rebuilt members went into OUT's shards")
