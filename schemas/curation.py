"""What broadcast curation found in a clip's picture, sound and burned-in text (the curate stage)."""

from __future__ import annotations

from pydantic import Field

from .base import Record


class TextBox(Record):
    """A line of burned-in text read by OCR in one sampled frame of the normalised video."""

    time_s: float = Field(ge=0, description="source time of the frame (normalised video)")
    box: list[float] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in pixels of the normalised video")
    text: str
    score: float = Field(ge=0, le=1, description="the recogniser's confidence")
    in_crop: float = Field(0.0, ge=0, le=1, description="share of the box's area inside the clip's crop")
    over_mouth: bool = Field(False, description="the box overlaps the speaker's mouth box (dilated) in that frame")


class ClipFingerprint(Record):
    """Compact signatures of a clip for rebroadcast detection across videos and runs."""

    video_hz: float = Field(gt=0, description="rate of the picture hashes")
    video: list[str] = Field(default_factory=list, description="64-bit DCT perceptual hashes (imagehash.phash) of the speaker crop, hex, one per 1/video_hz s")
    audio_hop_s: float = Field(gt=0, description="time between audio sub-fingerprints")
    audio: str = Field("", description="32-bit sub-fingerprints (Haitsma & Kalker 2002: signs of band-energy differences), little-endian uint32, base64")


class ClipCuration(Record):
    """Per-clip results of the curate stage (docs/curation.md); scores also go to ``quality``."""

    text_boxes: list[TextBox] = Field(default_factory=list)
    subtitle_text: str | None = Field(None, description="burned-in subtitle lines below the face, in order, repeats removed")
    subtitle_cer: float | None = Field(None, ge=0, description="share of the subtitle characters the ASR transcript does not say: edits of each subtitle line to its closest stretch of the transcript / subtitle characters (simplified Chinese, numerals and punctuation normalised; docs/curation.md)")
    flags: list[str] = Field(default_factory=list, description="findings that do not reject the clip (e.g. subtitle_mismatch, text_in_crop, picture_in_picture)")
    fingerprint: ClipFingerprint | None = None
    duplicate_group: str | None = Field(None, description="rebroadcast group of this clip: the key of the clip kept for it (this run's or an earlier run's into the same output folder)")
    duplicate_of: list[str] = Field(default_factory=list, description="keys of the other clips of the group (copies in other videos or runs)")


class FingerprintEntry(Record):
    """One clip of an output folder's rebroadcast registry (``fingerprints.jsonl``): later runs into
    the same folder, or pointed at it, find their copies of it."""

    clip_uid: str
    key: str
    video_id: str
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    fingerprint: ClipFingerprint
