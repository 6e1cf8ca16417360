"""Options of the curate stage (config section ``curate``). Defaults and how each was calibrated:
docs/curation.md."""

from __future__ import annotations

from pydantic import Field

from schemas.settings import Settings


class CurateOptions(Settings):
    """What broadcast curation measures and where it rejects a clip."""

    enabled: bool = True
    reject: bool = Field(True, description="false: an audit run: every score, verdict and flag is recorded, no clip is rejected (a failed check stays in the clip's checks)")
    # burned-in text
    ocr: bool = Field(True, description="read burned-in text (PP-OCR via rapidocr) on the clip's frames")
    ocr_every_s: float = Field(2.0, gt=0, description="one OCR frame per this many seconds of a clip (a subtitle line stays up 2-4 s; OCR is most of the stage's cost)")
    ocr_min_score: float = Field(0.6, ge=0, le=1, description="text lines the recogniser is less sure of are ignored")
    text_policy: str = Field("mouth", pattern=r"^(mouth|crop|flag)$",
                             description="reject a clip when text overlaps the speaker's mouth (mouth), anywhere in the crop (crop), or never (flag)")
    max_subtitle_cer: float = Field(0.5, ge=0, description="subtitle_mismatch flag above this character error rate of the transcript against the subtitles")
    # motion (TalkVid's head scores; camera from background tracking)
    max_head_movement: float = Field(0.015, gt=0, description="head_motion reject: mean keypoint displacement between adjacent frames, in frame short sides (TalkVid avg_movement)")
    max_head_rotation_deg: float = Field(3.0, gt=0, description="head_motion reject: mean per-frame rotation, L2 of Δyaw, Δpitch, Δroll in degrees (TalkVid avg_rotation)")
    max_camera_pan: float = Field(0.1, gt=0, description="camera_motion reject: background translation, frame short sides per second")
    max_camera_zoom: float = Field(0.12, gt=0, description="camera_motion reject: |log scale| of the background per second")
    max_camera_shake: float = Field(0.2, gt=0, description="camera_motion reject: frame-to-frame background jitter (std of the velocity), short sides per second")
    camera_pairs: int = Field(6, ge=2, description="frame pairs per clip the background is tracked on")
    camera_gap_s: float = Field(0.2, gt=0, description="time between the two frames of a pair")
    # picture
    max_brisque: float = Field(57.0, gt=0, description="low_picture_quality reject: BRISQUE score of the crop (lower is better; 0-100)")
    min_brightness: float = Field(50.0, ge=0, le=255, description="too_dark reject: mean luma (0-255) of the crop")
    max_border_in_crop: float = Field(0.05, ge=0, le=1, description="letterboxed reject: share of the crop that is black border")
    pip_reject: bool = Field(False, description="reject picture-in-picture footage (default: flag only)")
    # occlusion
    max_occluded_ratio: float = Field(0.2, ge=0, le=1, description="hand_over_face reject: share of frames with a hand over the mouth")
    # rebroadcast duplicates (grouped across videos and runs by the pipeline)
    fingerprint: bool = Field(True, description="picture and audio fingerprints for rebroadcast detection")
    video_hash_hz: float = Field(2.0, gt=0, description="perceptual hashes of the crop per second")
    duplicates: str = Field("drop", pattern=r"^(drop|keep)$", description="drop: one clip of each rebroadcast group goes to the shards; keep: all, grouped (splits keep a group together)")
    max_audio_ber: float = Field(0.35, gt=0, lt=0.5, description="same audio: bit error rate of the aligned audio fingerprints at most this (0.5 = unrelated)")
    max_video_hamming: int = Field(12, ge=0, le=64, description="same picture: median Hamming distance of the aligned crop hashes at most this (of 64 bits)")
    min_overlap: float = Field(0.5, gt=0, le=1, description="copies must overlap by this share of the shorter clip")
