"""What the user asked to ingest, and what the download stage made of it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import SAFE_ID_PATTERN, Record


class SourceProvenance(Record):
    """Where a video came from, as the platform states it (yt-dlp's info.json); what a release cites."""

    source_uri: str = Field(description="URL or path as given in the sources file")
    webpage_url: str | None = Field(None, description="the page the video was taken from")
    extractor: str | None = Field(None, description="yt-dlp extractor (site) name")
    original_id: str | None = Field(None, description="the platform's id of the video")
    title: str | None = None
    channel: str | None = None
    uploader: str | None = None
    upload_date: str | None = Field(None, description="YYYYMMDD, as the platform states it")
    platform_licence: str | None = Field(None, description="licence as the platform states it")


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
    backend: Literal["yt-dlp", "http", "local"]
    title: str | None = None
    provenance: SourceProvenance | None = Field(default=None, description="where the video came from (yt-dlp's info.json; local files: path and name)")
