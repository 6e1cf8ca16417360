"""Run-level records: shard manifest rows, failures, and run statistics."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from .base import Record
from .clip import CLIP_KEY_PATTERN

_SHA256 = r"^[0-9a-f]{64}$"


class ManifestRow(Record):
    """One sample in one shard: one line of ``manifest.jsonl``."""

    key: str = Field(pattern=CLIP_KEY_PATTERN)
    shard: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.tar$", description="shard file name")
    video_id: str
    duration_s: float = Field(gt=0)
    member_bytes: dict[str, int] = Field(description="member suffix -> size in bytes")
    member_sha256: dict[str, str] = Field(description="member suffix -> sha256 hex digest")

    @model_validator(mode="after")
    def _same_members(self) -> "ManifestRow":
        if set(self.member_bytes) != set(self.member_sha256):
            raise ValueError("member_bytes and member_sha256 name different members")
        for suffix, digest in self.member_sha256.items():
            if not re.match(_SHA256, digest):
                raise ValueError(f"member {suffix}: {digest!r} is not a sha256 hex digest")
        return self


class FailureRecord(Record):
    """A video that could not be processed: which stage, a machine-readable reason, a message."""

    video_id: str
    source_uri: str
    stage: str
    reason: str = Field(pattern=r"^[a-z0-9_]+$")
    message: str


class StageTiming(Record):
    videos: int = Field(ge=0)
    seconds: float = Field(ge=0)


class RunStats(Record):
    """Summary of one ingestion run (``stats.json``)."""

    videos_in: int = Field(ge=0)
    videos_ok: int = Field(ge=0)
    videos_failed: int = Field(ge=0)
    videos_resumed: int = Field(ge=0, description="videos whose clips came from an earlier run's ledger")
    source_hours: float = Field(ge=0, description="duration of the inputs that could be probed")
    clip_hours: float = Field(ge=0)
    clips: int = Field(ge=0)
    shards: int = Field(ge=0)
    failures_by_reason: dict[str, int] = Field(default_factory=dict, description="'stage/reason' -> count")
    rejects_by_reason: dict[str, int] = Field(default_factory=dict, description="clip-level rejects (candidate clips or stretches)")
    rejected_seconds_by_reason: dict[str, float] = Field(default_factory=dict, description="seconds of speech lost per reject reason")
    stage_timings: dict[str, StageTiming] = Field(default_factory=dict)
    skipped_stages: dict[str, str] = Field(default_factory=dict, description="stage -> why it did not run")
    wall_s: float = Field(ge=0)
    started_at: str
    finished_at: str
    ray_address: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _counts_add_up(self) -> "RunStats":
        if self.videos_ok + self.videos_failed != self.videos_in:
            raise ValueError(
                f"videos_ok ({self.videos_ok}) + videos_failed ({self.videos_failed}) != videos_in ({self.videos_in})"
            )
        return self


class LedgerEntry(Record):
    """Outcome of one stage for one video, as kept in the resume ledger."""

    video_id: str
    stage: str
    status: str = Field(pattern=r"^(ok|failed)$")
    output: Any = Field(default=None, description="the stage's output record(s) as JSON data")
    failure: FailureRecord | None = None
    seconds: float = Field(ge=0)
    finished_at: str
    fingerprint: str | None = Field(default=None, description="hash of the config this stage and the ones before it ran with")
