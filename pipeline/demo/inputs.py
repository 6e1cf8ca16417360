"""Demo and test inputs: two real talking-head recordings (``media/real/``) and talking-person
videos made from real photos and espeak-ng speech.

The photos are the ones scikit-image ships (``astronaut``: a frontal upper body; ``camera``: a
man in three-quarter profile, whose clips the head-pose filter rejects as ``non_frontal``). The
head sways a little and the mouth opens with the loudness of the speech (``talking_face``: a
piecewise-affine warp of the photo on its face mesh), so the lips are in sync with the audio; a dub
(the lips say another sentence than the soundtrack) shows the sync check rejecting it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.demo.talking_face import FaceWarp, face_warp, photo_mesh, speech_envelope

FPS = 25
DEMO_INPUTS_VERSION = "4"  # 2: talking faces (lips in sync) and a dub; 3: real speech, English anchors, a Mandarin one; 4: real recordings
# Mouth centre and half-size in the 512x512 astronaut photo (MediaPipe face mesh lips 13/14, 61/291).
ASTRONAUT_MOUTH = (223, 147, 21, 6)


@dataclass(frozen=True)
class DemoVideo:
    name: str
    photo: str  # scikit-image data name
    voice: str  # espeak-ng voice
    text: str
    mirror: bool = False
    dub_text: str | None = None  # heard instead of ``text`` (the lips still say ``text``): a dub
    frozen: bool = False  # the mouth never moves: a voice-over on a still face
    audio_lead_frames: int = 0  # the soundtrack comes this many frames early (> 0) or late (< 0)
    real_speech: tuple[float, float] | None = None  # speak this stretch (s) of pyannote.audio's sample.wav instead of ``text``


DEMO_VIDEOS: tuple[DemoVideo, ...] = (
    DemoVideo("anchor_1", "astronaut", "en-us", "Good evening. Here is the news. Scientists report a new discovery today."),
    DemoVideo("anchor_2", "astronaut", "en-us", "In other news, the weather will be sunny and warm across the country tomorrow.", mirror=True),
    # lips moved by a real recording (pyannote.audio's sample.wav, one speaker's 4.5 s)
    DemoVideo("anchor_real", "astronaut", "en-us", "", real_speech=(22.0, 26.5)),
    # a profile: its clips are rejected (the face mesh barely holds it: voice_over / non_frontal)
    DemoVideo("anchor_profile", "camera", "en-us", "Good evening. Here is the news. Scientists report a new discovery today."),
    # a dub: the anchor's lips say one sentence, the soundtrack is another (rejected: voice_over / not_speaking)
    DemoVideo("anchor_dub", "astronaut", "en-us", "Tonight we look at the markets and the latest results from the capital.",
              dub_text="Thank you for watching, and have a very pleasant evening with your family."),
    # espeak-ng Mandarin: Whisper base hears loops ("铭铭铭…"): the segment is flagged, the clip asr_unreliable
    DemoVideo("anchor_zh", "astronaut", "cmn-latn-pinyin", "da4 jia1 hao3, huan1 ying2 shou1 kan4 xin1 wen2 lian2 bo1. jin1 tian1 tian1 qi4 hen3 hao3."),
)


#: Real talking-head recordings from ``media/real/`` (provenance in its README) that the demo ingests
#: next to the generated anchors: file stem -> (language, licence).
DEMO_REAL: dict[str, tuple[str, str]] = {
    "retalking_4": ("en", "Apache-2.0 (OpenTalker/video-retalking examples/face/4.mp4)"),
    "vox_00473": ("en", "CC-BY-4.0 (Hangz-nju-cuhk/Talking-Face_PC-AVS misc/Pose_Source/00473.mp4)"),
}
REAL_MEDIA_DIR = Path(__file__).resolve().parents[2] / "media" / "real"


def require_tools() -> None:
    missing = [t for t in ("ffmpeg", "ffprobe", "espeak-ng") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing system tools: {', '.join(missing)} (run `make setup`)")


def synthesize(text: str, voice: str, path: str, speed_wpm: int = 150) -> None:
    """Speak ``text`` with espeak-ng into a wav file."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-w", path, text], check=True, capture_output=True)


def _photo(name: str, mirror: bool) -> np.ndarray:
    """A scikit-image data photo by name, or an image file by path, as RGB uint8."""
    import skimage.data
    import skimage.io

    img = skimage.io.imread(name) if os.path.sep in name else getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    return img[:, ::-1].copy() if mirror else img


def talking_frames(warp: FaceWarp, envelope: np.ndarray, size: int = 480) -> np.ndarray:
    """(T, size, size, 3) uint8 frames: a window swaying over the photo, the mouth opened by ``envelope`` in [0,1]."""
    h, w = warp.photo.shape[:2]
    t = np.arange(len(envelope))
    dx = np.round((w - size) / 2 + (w - size) / 2 * 0.6 * np.sin(2 * np.pi * t / 75)).astype(int)
    dy = np.round((h - size) / 2 + (h - size) / 2 * 0.4 * np.sin(2 * np.pi * t / 110)).astype(int)
    frames = np.empty((len(envelope), size, size, 3), np.uint8)
    for i, e in enumerate(envelope):
        frames[i] = warp.frame(e)[dy[i]: dy[i] + size, dx[i]: dx[i] + size]
    return frames


@functools.lru_cache(maxsize=8)
def photo_warp(photo: str, mirror: bool = False) -> FaceWarp:
    """The talking-face warps of a scikit-image photo (its largest face), computed once per process."""
    img = _photo(photo, mirror)
    meshes = photo_mesh(img)
    if not meshes:
        raise RuntimeError(f"no face found on the {photo} photo")
    return face_warp(img, meshes[0])


def speech_audio(text: str, voice: str) -> tuple[np.ndarray, int]:
    """espeak-ng speech of ``text`` as float32 samples and their rate."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        synthesize(text, voice, path)
        audio, sr = sf.read(path, dtype="float32")
    return audio, sr


def real_recording(start_s: float, end_s: float) -> tuple[np.ndarray, int]:
    """A stretch of pyannote.audio's ``sample/sample.wav`` (a real two-speaker recording, MIT)."""
    import importlib.util

    spec = importlib.util.find_spec("pyannote.audio")
    path = os.path.join(os.path.dirname(spec.origin), "sample", "sample.wav") if spec and spec.origin else ""
    if not os.path.isfile(path):
        raise RuntimeError("pyannote.audio's sample.wav is missing (run `make setup`)")
    audio, sr = sf.read(path, dtype="float32")
    return audio[int(start_s * sr): int(end_s * sr)], sr


def shift_audio(audio: np.ndarray, sr: int, lead_frames: int, fps: float = FPS) -> np.ndarray:
    """The same length of audio, ``lead_frames`` video frames earlier (> 0: the sound leads the lips)."""
    n = round(lead_frames * sr / fps)
    if n > 0:
        return np.concatenate([audio[n:], np.zeros(n, audio.dtype)])
    if n < 0:
        return np.concatenate([np.zeros(-n, audio.dtype), audio[: len(audio) + n]])
    return audio


def make_talking_video(path: str, video: DemoVideo, lead_s: float = 0.4, tail_s: float = 0.6) -> float:
    """Write an mp4 (H.264 + AAC) of a photo speaking ``video.text``; returns its duration in seconds.

    The lips follow ``video.text``; the soundtrack is ``video.dub_text`` when set (a dub: another
    utterance over the same lips), shifted by ``video.audio_lead_frames``; ``video.frozen`` keeps the
    mouth shut (a voice-over on a still face)."""
    lips, sr = real_recording(*video.real_speech) if video.real_speech else speech_audio(video.text, video.voice)
    heard = speech_audio(video.dub_text, video.voice)[0] if video.dub_text else lips
    return write_talking_video(path, photo_warp(video.photo, video.mirror), lips, heard, sr, video.frozen,
                               video.audio_lead_frames, lead_s, tail_s)


def write_talking_video(path: str, warp: FaceWarp, lips: np.ndarray, heard: np.ndarray, sr: int, frozen: bool = False,
                        lead_frames: int = 0, lead_s: float = 0.4, tail_s: float = 0.6) -> float:
    """Write an mp4 of ``warp``'s face whose mouth follows the loudness of ``lips`` (or stays shut when
    ``frozen``) over the soundtrack ``heard`` moved ``lead_frames`` frames early; both padded with
    ``lead_s`` / ``tail_s`` of silence to the longer one. Returns the duration in seconds."""
    n = max(len(lips), len(heard))

    def pad(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        return np.concatenate([np.zeros(int(lead_s * sr), np.float32), a, np.zeros(n - len(a) + int(tail_s * sr), np.float32)])

    lips, heard = pad(lips), pad(heard)
    n_frames = int(len(lips) / sr * FPS)
    envelope = np.zeros(n_frames) if frozen else speech_envelope(lips, sr, FPS, n_frames)
    frames = talking_frames(warp, envelope)
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "audio.wav")
        sf.write(wav, shift_audio(heard, sr, lead_frames), sr)
        _encode(frames, wav, path)
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
    stamp = root / ".demo_inputs_version"
    fresh = stamp.exists() and stamp.read_text().strip() == DEMO_INPUTS_VERSION  # inputs of an older toolkit are redone
    rows = ["path,id,language,licence,channel"]
    for v in DEMO_VIDEOS:
        target = root / f"{v.name}.mp4"
        if not (fresh and target.exists()):  # idempotent: `make demo` twice reuses the inputs
            make_talking_video(str(target), v)
        lang = "zh" if v.voice.startswith("cmn") else "en"
        rows.append(f"{target.name},{v.name},{lang},CC-BY-4.0 (demo),demo")
    for stem, (lang, licence) in DEMO_REAL.items():
        src = REAL_MEDIA_DIR / f"{stem}.mp4"
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: the demo's real recordings live in media/real/ of the CNAS checkout")
        target = root / f"real_{stem}.mp4"
        if not target.exists():
            shutil.copyfile(src, target)
        rows.append(f'{target.name},real_{stem},{lang},"{licence}",real')
    broken = root / "broken_upload.mp4"
    broken.write_text("this is a text file renamed to .mp4, as uploads sometimes are\n", encoding="utf-8")
    rows.append(f"{broken.name},broken_upload,zh,,demo")
    sources = root / "sources.csv"
    sources.write_text("\n".join(rows) + "\n", encoding="utf-8")
    stamp.write_text(DEMO_INPUTS_VERSION + "\n")
    return str(sources)
