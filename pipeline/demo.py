"""Demo and test inputs: talking-person videos made from real photos and espeak-ng speech.

The photos are the ones scikit-image ships (``astronaut``: a frontal upper body; ``camera``: a
man in three-quarter profile, whose clips the head-pose filter rejects as ``non_frontal``). The head sways a little and the mouth region darkens with the speech envelope,
so there is motion that is in sync with the audio.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

FPS = 25
# Mouth centre and half-size in the 512x512 astronaut photo (MediaPipe face mesh lips 13/14, 61/291).
ASTRONAUT_MOUTH = (223, 147, 21, 6)


@dataclass(frozen=True)
class DemoVideo:
    name: str
    photo: str  # scikit-image data name
    voice: str  # espeak-ng voice
    text: str
    mirror: bool = False


DEMO_VIDEOS: tuple[DemoVideo, ...] = (
    DemoVideo("anchor_zh_1", "astronaut", "cmn-latn-pinyin", "da4 jia1 hao3, huan1 ying2 shou1 kan4 xin1 wen2 lian2 bo1. jin1 tian1 tian1 qi4 hen3 hao3."),
    DemoVideo("anchor_zh_2", "astronaut", "cmn-latn-pinyin", "xia4 mian4 bo1 bao4 guo2 ji4 xin1 wen2. ke1 xue2 jia1 fa1 xian4 le5 xin1 de5 xing1 xing5.", mirror=True),
    DemoVideo("anchor_en", "camera", "en-us", "Good evening. Here is the news. Scientists report a new discovery today."),
)


def require_tools() -> None:
    missing = [t for t in ("ffmpeg", "ffprobe", "espeak-ng") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing system tools: {', '.join(missing)} (run `make setup`)")


def synthesize(text: str, voice: str, path: str, speed_wpm: int = 150) -> None:
    """Speak ``text`` with espeak-ng into a wav file."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-w", path, text], check=True, capture_output=True)


def _photo(name: str, mirror: bool) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    return img[:, ::-1].copy() if mirror else img


def talking_frames(photo: np.ndarray, envelope: np.ndarray, size: int = 480, mouth=None) -> np.ndarray:
    """(T, size, size, 3) uint8 frames: a window swaying over the photo, mouth darkened by ``envelope`` in [0,1]."""
    h, w = photo.shape[:2]
    t = np.arange(len(envelope))
    dx = np.round((w - size) / 2 + (w - size) / 2 * 0.6 * np.sin(2 * np.pi * t / 75)).astype(int)
    dy = np.round((h - size) / 2 + (h - size) / 2 * 0.4 * np.sin(2 * np.pi * t / 110)).astype(int)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((len(envelope), size, size, 3), np.uint8)
    for i, e in enumerate(envelope):
        img = photo
        if mouth is not None and e > 0.02:
            cx, cy, rx, ry = mouth
            open_ry = ry * (1 + 1.5 * e)  # the mouth opens vertically with loudness
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / open_ry) ** 2 <= 1
            img = photo.copy()
            img[inside] = (img[inside] * (1 - 0.7 * e)).astype(np.uint8)
        frames[i] = img[dy[i] : dy[i] + size, dx[i] : dx[i] + size]
    return frames


def make_talking_video(path: str, video: DemoVideo, lead_s: float = 0.4, tail_s: float = 0.6) -> float:
    """Write an mp4 (H.264 + AAC) of a photo speaking ``video.text``; returns its duration in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        speech = os.path.join(tmp, "speech.wav")
        synthesize(video.text, video.voice, speech)
        audio, sr = sf.read(speech, dtype="float32")
        audio = np.concatenate([np.zeros(int(lead_s * sr), np.float32), audio, np.zeros(int(tail_s * sr), np.float32)])
        padded = os.path.join(tmp, "audio.wav")
        sf.write(padded, audio, sr)
        n_frames = int(len(audio) / sr * FPS)
        hop = sr / FPS
        rms = np.array([np.sqrt(np.mean(audio[int(i * hop) : int((i + 1) * hop)] ** 2) + 1e-12) for i in range(n_frames)])
        envelope = np.clip(rms / (rms.max() + 1e-9), 0, 1)
        photo = _photo(video.photo, video.mirror)
        mouth = None
        if video.photo == "astronaut":
            cx, cy, rx, ry = ASTRONAUT_MOUTH
            mouth = (photo.shape[1] - 1 - cx if video.mirror else cx, cy, rx, ry)
        frames = talking_frames(photo, envelope, mouth=mouth)
        _encode(frames, padded, path)
        return n_frames / FPS


def _encode(frames: np.ndarray, wav: str, path: str) -> None:
    t, h, w, _ = frames.shape
    cmd = [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
        "-r", str(FPS), "-i", "pipe:0", "-i", wav, "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast",
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-shortest", path,
    ]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-300:]}")


def write_demo_inputs(folder: str) -> str:
    """Generate the demo videos plus one deliberately broken input; return the sources file (csv)."""
    require_tools()
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,id,language,licence,channel"]
    for v in DEMO_VIDEOS:
        target = root / f"{v.name}.mp4"
        if not target.exists():  # idempotent: `make demo` twice reuses the inputs
            make_talking_video(str(target), v)
        lang = "zh" if v.voice.startswith("cmn") else "en"
        rows.append(f"{target.name},{v.name},{lang},CC-BY-4.0 (demo),demo")
    broken = root / "broken_upload.mp4"
    broken.write_text("this is a text file renamed to .mp4, as uploads sometimes are\n", encoding="utf-8")
    rows.append(f"{broken.name},broken_upload,zh,,demo")
    sources = root / "sources.csv"
    sources.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(sources)
