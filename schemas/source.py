"""What the user asked to ingest, and what the download stage made of it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import SAFE_ID_PATTERN, Record


class SourceItem(Record):
    """One video to ingest: a URL (http/https/file/yt-dlp-supported site) or a local path."""

    video_id: str = Field(pattern=SAFE_ID_PATTERN, description="stable, filesystem-safe id")
    uri: str = Field(min_length=1, description="URL or local path as given by the user")
    kind: Literal["url", "file"]
    metadata: dict[str, Any] = Field(default_factory=dict, description="extra columns of the sources file")
    origin: str | None = Field(default=None, description="playlist/channel URL this item was expanded from")


class DownloadResult(Record):
    """A source made local: the media file path (relative to the work dir, or absolute for local inputs)."""

    video_id: str = Field(pattern=SAFE_ID_PATTERN)
    source_uri: str
    media_path: str = Field(description="path of the downloaded or local media file")
    info_path: str | None = Field(default=None, description="yt-dlp .info.json, when downloaded")
    size_bytes: int = Field(ge=0)
    backend: Literal["yt-dlp", "local"]
    title: str | None = None
