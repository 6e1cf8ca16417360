"""Probe results and normalised media."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import SAFE_ID_PATTERN, Record


class AudioTrack(Record):
    """One audio stream of an input, as ffprobe describes it."""

    index: int = Field(ge=0, description="position among the file's audio streams (ffmpeg's a:<index>)")
    language: str | None = Field(None, description="the stream's language tag, as the file states it (e.g. 'chi', 'eng')")
    codec: str | None = None
    channels: int | None = Field(None, ge=1)
    sample_rate_hz: int | None = Field(None, gt=0)
    start_s: float | None = Field(None, description="presentation time of its first sample")
    duration_s: float | None = Field(None, ge=0)


class ProbeInfo(Record):
    """What ffprobe found in an input file. ``width``/``height`` are the coded size of the first video
    stream; ``display_width``/``display_height`` what a player shows (pixel aspect and rotation applied)."""

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
    sample_aspect_ratio: float = Field(1.0, gt=0, description="pixel width / pixel height of the coded frame")
    rotation_deg: int = Field(0, description="clockwise display rotation from the display matrix: 0, 90, 180 or 270")
    display_width: int | None = Field(default=None, ge=1)
    display_height: int | None = Field(default=None, ge=1)
    variable_frame_rate: bool = Field(False, description="r_frame_rate and avg_frame_rate differ")
    pix_fmt: str | None = None
    bit_depth: int | None = Field(default=None, ge=1)
    color_transfer: str | None = None
    field_order: str | None = Field(None, description="as the container states it (progressive, tt, bb, ...); often absent")
    video_start_s: float | None = None
    video_duration_s: float | None = Field(default=None, ge=0)
    format_start_s: float = 0.0
    audio_tracks: list[AudioTrack] = Field(default_factory=list)


class NormalizeDecisions(Record):
    """What normalisation did to one source, and why: enough to map a normalised pixel or second back
    to the source and to audit every choice (docs/normalize.md)."""

    rotation_deg: int = Field(0, description="clockwise rotation applied (the source's display matrix)")
    sample_aspect_ratio: float = Field(1.0, gt=0, description="source pixel aspect undone by the scale (output pixels are square)")
    display_width: int = Field(ge=1, description="source width as displayed (pixel aspect and rotation applied)")
    display_height: int = Field(ge=1)
    interlace_frames: dict[str, int] = Field(default_factory=dict, description="idet counts on the sampled frames: tff, bff, progressive, undetermined")
    interlaced: bool | None = Field(False, description="idet's verdict; null when not checked (normalize.deinterlace=always|never)")
    deinterlaced: bool = Field(False, description="bwdif applied")
    video_copied: bool = Field(False, description="the video stream was copied, not re-encoded (it already conformed: normalize.passthrough)")
    source_bit_depth: int | None = None
    tone_mapped: bool = Field(False, description="HDR (PQ/HLG) tone-mapped to 8-bit BT.709")
    variable_frame_rate: bool = False
    source_fps: float | None = None
    audio_track: int = Field(0, ge=0, description="index of the audio stream used")
    audio_track_language: str | None = None
    audio_track_reason: str = Field("first", description="'language' (its tag matched the source's language) or 'first'")
    audio_channels_used: list[int] = Field(
        default_factory=list, description="channels averaged into the mono wav, dead ones left out (of the stereo downmix for sources with more than 2)")
    video_start_s: float = Field(0.0, description="source presentation time of normalised frame 0 (and of audio sample 0)")
    audio_offset_s: float = Field(0.0, description="audio start minus video start in the source: >0 padded with silence, <0 trimmed")
    video_length_s: float | None = Field(None, description="source video length")
    audio_length_s: float | None = Field(None, description="source audio length")
    trimmed_to_s: float | None = Field(None, description="both streams cut to this common length (they differed)")


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
    decisions: NormalizeDecisions | None = None

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
