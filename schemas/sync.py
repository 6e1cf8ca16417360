"""Audio-visual sync records: the sync stage's per-video result and what a clip carries."""

from __future__ import annotations

from pydantic import Field

from .base import Record


class SyncResult(Record):
    """What the sync stage records for one video: where its features are (``sync.npz``: per-frame
    video features per face slot, audio features, active-speaker confidence and offset) and a summary."""

    path: str = Field(description="work-dir path or URI of the video's sync.npz")
    backend: str = Field(description="lips (lip shape predicted from the log-mel spectrum, geometry/lip_audio.py) or syncnet")
    num_frames: int = Field(gt=0)
    speaking_s: dict[str, float] = Field(default_factory=dict, description="face track id -> seconds it is the in-sync speaker")


class ClipSync(Record):
    """Who speaks in a clip and how well voice and lips agree (the sync stage's evidence).

    ``offset_frames`` > 0: the sound came that many frames before the lips (audio led); the clip's
    audio was delayed by ``audio_shift_frames`` (0 when the offset was beyond ``sync.max_shift_frames``).
    """

    backend: str
    face_track: int = Field(ge=0, description="face track id (pose.npz faces_track) of the speaker")
    speaker: str | None = Field(None, description="diarized speaker label of the clip's speech")
    offset_frames: int
    confidence: float
    audio_shift_frames: int = 0
    verdict: str = Field("pass", pattern=r"^(pass|fail|unverified)$",
                         description="pass: confidence at or above sync.min_confidence; unverified: between sync.fail_below and it (kept by default); fail: rejected")
