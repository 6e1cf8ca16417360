"""Transcripts with word timings and speakers (filled by the speech stage)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import SAFE_ID_PATTERN, Record

_EPS_S = 1e-3  # float slack when comparing times


class Word(Record):
    """A word (or a Chinese character) with its time span in seconds from the start of the media."""

    text: str
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    score: float | None = Field(default=None, ge=0, le=1, description="alignment confidence")
    speaker: str | None = None
    interpolated: bool = Field(default=False, description="time interpolated, not aligned (numerals, symbols)")

    @model_validator(mode="after")
    def _ordered(self) -> "Word":
        if self.end_s + _EPS_S < self.start_s:
            raise ValueError(f"word {self.text!r} ends ({self.end_s}) before it starts ({self.start_s})")
        return self


class Segment(Record):
    """A stretch of speech by one speaker."""

    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    text: str
    speaker: str | None = None
    speaker_confidence: float | None = Field(default=None, ge=0, le=1)
    words: list[Word] = Field(default_factory=list)
    avg_logprob: float | None = Field(None, description="mean token log-probability under Whisper (teacher-forced)")
    no_speech_prob: float | None = Field(None, ge=0, le=1, description="Whisper's no-speech probability of the segment's audio")
    compression_ratio: float | None = Field(None, ge=0, description="UTF-8 bytes / zlib bytes of the text (Whisper's definition)")
    flags: list[str] = Field(default_factory=list, description="hygiene flags: loop, high_compression, low_logprob, no_speech, over_non_speech")

    @model_validator(mode="after")
    def _words_inside(self) -> "Segment":
        if self.end_s + _EPS_S < self.start_s:
            raise ValueError(f"segment ends ({self.end_s}) before it starts ({self.start_s})")
        _check_monotonic([w.start_s for w in self.words], "word starts")
        return self


class Transcript(Record):
    """Speech of one media file (or clip); times are relative to that media's start."""

    video_id: str = Field(pattern=SAFE_ID_PATTERN)
    duration_s: float = Field(gt=0, description="length of the media the times refer to")
    language: str
    text: str = Field(description="normalised text (simplified Chinese for zh)")
    raw_text: str = Field(description="text as the recogniser produced it")
    segments: list[Segment] = Field(default_factory=list)
    main_speaker: str | None = None
    asr_backend: str
    align_backend: str | None = None
    diarization_backend: str | None = None

    @model_validator(mode="after")
    def _times_valid(self) -> "Transcript":
        _check_monotonic([s.start_s for s in self.segments], "segment starts")
        for seg in self.segments:
            if seg.end_s > self.duration_s + _EPS_S:
                raise ValueError(f"segment end {seg.end_s} s is past the media end {self.duration_s} s")
            for w in seg.words:
                if w.end_s > self.duration_s + _EPS_S:
                    raise ValueError(f"word {w.text!r} ends at {w.end_s} s, past the media end {self.duration_s} s")
        return self


def _check_monotonic(values: list[float], what: str) -> None:
    for a, b in zip(values, values[1:]):
        if b + _EPS_S < a:
            raise ValueError(f"{what} are not monotonic: {b} after {a}")
