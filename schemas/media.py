"""Probe results and normalised media."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import SAFE_ID_PATTERN, Record


class ProbeInfo(Record):
    """What ffprobe found in an input file."""

    duration_s: float = Field(ge=0)
    has_video: bool
    has_audio: bool
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)
    fps: float | None = Field(default=None, gt=0)
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_sample_rate_hz: int | None = Field(default=None, gt=0)
    format_name: str | None = None
    size_bytes: int = Field(ge=0)


class NormalizedMedia(Record):
    """A source transcoded to constant-frame-rate H.264 video plus a 16 kHz mono PCM wav."""

    video_id: str = Field(pattern=SAFE_ID_PATTERN)
    video_path: str
    audio_path: str
    duration_s: float = Field(gt=0)
    fps: float = Field(gt=0)
    num_frames: int = Field(gt=0)
    width: int = Field(ge=2)
    height: int = Field(ge=2)
    sample_rate_hz: int = Field(gt=0)
    num_audio_samples: int = Field(gt=0)
    source_probe: ProbeInfo

    @model_validator(mode="after")
    def _lengths_agree(self) -> "NormalizedMedia":
        # Video and audio are cut from the same source, so their lengths may differ by a frame or so
        # of container padding, never by more than a second.
        audio_s = self.num_audio_samples / self.sample_rate_hz
        video_s = self.num_frames / self.fps
        if abs(audio_s - video_s) > 1.0:
            raise ValueError(f"audio ({audio_s:.2f} s) and video ({video_s:.2f} s) lengths disagree")
        return self


class Shot(Record):
    """A shot: frames ``[start_frame, end_frame)`` of the normalised video between two cuts."""

    start_frame: int = Field(ge=0)
    end_frame: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Shot":
        if self.end_frame <= self.start_frame:
            raise ValueError(f"shot ends (frame {self.end_frame}) before it starts (frame {self.start_frame})")
        return self


class ShotList(Record):
    """The shots of one normalised video, in order, covering every frame exactly once."""

    video_id: str = Field(pattern=SAFE_ID_PATTERN)
    num_frames: int = Field(gt=0)
    fps: float = Field(gt=0)
    shots: list[Shot]
    backend: str

    @model_validator(mode="after")
    def _covers(self) -> "ShotList":
        expected = 0
        for s in self.shots:
            if s.start_frame != expected:
                raise ValueError(f"shots leave a gap or overlap at frame {expected}")
            expected = s.end_frame
        if expected != self.num_frames:
            raise ValueError(f"shots end at frame {expected}, the video has {self.num_frames}")
        return self
