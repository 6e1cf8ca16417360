"""The vendored real talking-head recordings (``media/real/``) and the negatives made from them, each
with its known answer. Used by the gate benchmark (``benchmarks/gates.py``), the real-media tests
and the demo.

* genuine: the recording as it is: every second of speech belongs to the one visible face;
* ``dub``: one file's video under another file's audio: nothing may be accepted;
* ``shift``: a file with its audio moved by ``k`` frames (25 fps; ``k > 0``: the audio comes ``k``
  frames early, SyncNet's sign): the measured offset must be ``k`` (± 1), or the clip rejected
  beyond ``sync.max_offset_frames``;
* ``voice_over``: faceless B-roll (a real photo, panned) under a file's audio: nothing accepted;
* ``still``: a file's first frame held under its own audio: nothing accepted;
* ``blur``: a file defocused (Gaussian blur): rejected as ``motion_blur``;
* ``two_shot``: two files side by side with the audio alternating between them (first half the
  left file's, second half the right file's): clips must crop the face whose voice is heard.

Everything is made with ffmpeg from the real files; nothing here is synthetic speech or a photo
made to talk.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DIR = os.path.join(ROOT, "media", "real")

#: Files the gate thresholds were calibrated on, and files held out to report on (docs/sync.md).
CALIBRATION = ("retalking_1", "retalking_2", "vox_00015", "vox_00086", "vox_00104", "vox_681100216")
HELD_OUT = ("retalking_4", "retalking_5", "vox_00098", "vox_00067", "vox_00473", "vox_517600055", "vox_620900105")
FRAME_S = 0.04  # one frame of the normalised 25-fps video


@dataclass
class Case:
    """One input of the gate benchmark and what a correct pipeline does with it."""

    name: str
    path: str
    kind: str  # genuine | dub | shift | voice_over | still | blur | two_shot
    group: str  # calibration | held_out
    shift_frames: int = 0  # kind shift: the applied offset (SyncNet's sign: > 0 audio early)
    halves: list[tuple[float, float, str]] = field(default_factory=list)  # two_shot: (start s, end s, "left"/"right") of each voice

    @property
    def genuine(self) -> bool:
        """Whether a correct pipeline keeps its speech (a genuine file, a two-shot, a small shift)."""
        return self.kind in ("genuine", "two_shot")


def real_path(name: str) -> str:
    return os.path.join(REAL_DIR, f"{name}.mp4")


def duration_s(path: str) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def _ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


_ENC = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k")


def make_dub(out: str, video_of: str, audio_of: str) -> str:
    """``video_of``'s picture under ``audio_of``'s sound (looped to the picture's length)."""
    _ff("-i", real_path(video_of), "-stream_loop", "-1", "-i", real_path(audio_of), "-map", "0:v", "-map", "1:a",
        "-t", f"{duration_s(real_path(video_of)):.3f}", *_ENC, out)
    return out


def make_shift(out: str, name: str, frames: int) -> str:
    """``name`` with its audio moved ``frames`` × 40 ms: ``frames > 0`` makes the sound come early
    (cut from its start, silence appended), ``frames < 0`` late (silence prepended)."""
    d = abs(frames) * FRAME_S
    if frames > 0:
        af = f"atrim=start={d:.3f},asetpts=PTS-STARTPTS,apad"
    else:
        af = f"adelay={int(round(d * 1000))}:all=1"
    _ff("-i", real_path(name), "-filter_complex", f"[0:a]{af}[a]", "-map", "0:v", "-map", "[a]",
        "-t", f"{duration_s(real_path(name)):.3f}", *_ENC, out)
    return out


def make_still(out: str, name: str) -> str:
    """The first frame of ``name`` held for its whole length under its own audio."""
    _ff("-i", real_path(name), "-filter_complex", "[0:v]trim=end_frame=1,loop=loop=-1:size=1,setpts=N/25/TB,fps=25[v]",
        "-map", "[v]", "-map", "0:a", "-t", f"{duration_s(real_path(name)):.3f}", *_ENC, out)
    return out


def make_blur(out: str, name: str, sigma: float = 6.0) -> str:
    """``name`` defocused (a Gaussian blur of ``sigma`` px on the 25-fps picture), its own audio."""
    _ff("-i", real_path(name), "-vf", f"fps=25,gblur=sigma={sigma}", *_ENC, out)
    return out


def make_voice_over(out: str, name: str) -> str:
    """Faceless B-roll (scikit-image's photo of a rocket on its pad, slowly zoomed) under ``name``'s audio."""
    import skimage.data
    from PIL import Image

    photo = out + ".png"
    Image.fromarray(skimage.data.rocket()).save(photo)
    dur = duration_s(real_path(name))
    _ff("-loop", "1", "-framerate", "25", "-i", photo, "-i", real_path(name), "-filter_complex",
        "[0:v]scale=1280:-2,zoompan=z='1+0.002*on':d=1:s=640x360:fps=25[v]", "-map", "[v]", "-map", "1:a",
        "-t", f"{dur:.3f}", *_ENC, out)
    os.remove(photo)
    return out


def make_two_shot(out: str, left: str, right: str, height: int = 360) -> tuple[str, list[tuple[float, float, str]]]:
    """``left`` and ``right`` side by side (each scaled to ``height``), the audio the left file's for
    the first half and the right file's for the second: the voice heard is always one of the two
    visible faces, in sync with it. Returns the path and the (start, end, side) of each voice."""
    dur = min(duration_s(real_path(left)), duration_s(real_path(right)))
    half = round(dur / 2, 2)
    _ff("-i", real_path(left), "-i", real_path(right), "-filter_complex",
        f"[0:v]fps=25,scale=-2:{height},setsar=1[l];[1:v]fps=25,scale=-2:{height},setsar=1[r];[l][r]hstack=inputs=2[v];"
        f"[0:a]aresample=16000,aformat=channel_layouts=mono,atrim=end={half},asetpts=PTS-STARTPTS[a0];"
        f"[1:a]aresample=16000,aformat=channel_layouts=mono,atrim=start={half},asetpts=PTS-STARTPTS,"
        f"adelay={int(half * 1000)}:all=1[a1];[a0][a1]amix=inputs=2:duration=longest:normalize=0[a]",
        "-map", "[v]", "-map", "[a]", "-t", f"{dur:.3f}", *_ENC, out)
    return out, [(0.0, half, "left"), (half, dur, "right")]


def build_cases(out_dir: str, groups: tuple[str, ...] = ("calibration", "held_out"), shifts: tuple[int, ...] = (-10, -5, -3, 3, 5, 10)) -> list[Case]:
    """The genuine files of ``groups`` and the negatives made from each group's own files (a dub
    pairs each file with the next one of its group; shifts, a still and a voice-over from the
    group's first files; one two-shot per group)."""
    os.makedirs(out_dir, exist_ok=True)
    cases: list[Case] = []
    for group in groups:
        names = CALIBRATION if group == "calibration" else HELD_OUT
        for name in names:
            cases.append(Case(name, real_path(name), "genuine", group))
        for i, name in enumerate(names):
            other = names[(i + 1) % len(names)]
            p = os.path.join(out_dir, f"dub_{name}_{other}.mp4")
            cases.append(Case(f"dub_{name}_{other}", make_dub(p, name, other), "dub", group))
        for k in shifts:
            name = names[0] if k > 0 else names[-1]
            tag = f"p{k}" if k > 0 else f"m{-k}"
            p = os.path.join(out_dir, f"shift_{name}_{tag}.mp4")
            cases.append(Case(f"shift_{name}_{tag}", make_shift(p, name, k), "shift", group, shift_frames=k))
        p = os.path.join(out_dir, f"still_{names[1]}.mp4")
        cases.append(Case(f"still_{names[1]}", make_still(p, names[1]), "still", group))
        p = os.path.join(out_dir, f"blur_{names[3]}.mp4")
        cases.append(Case(f"blur_{names[3]}", make_blur(p, names[3]), "blur", group))
        p = os.path.join(out_dir, f"voice_over_{names[2]}.mp4")
        cases.append(Case(f"voice_over_{names[2]}", make_voice_over(p, names[2]), "voice_over", group))
        left, right = names[0], names[-1]
        path, halves = make_two_shot(os.path.join(out_dir, f"two_shot_{left}_{right}.mp4"), left, right)
        cases.append(Case(f"two_shot_{left}_{right}", path, "two_shot", group, halves=halves))
    return cases


def speech_seconds(transcript: dict | None) -> float:
    """Seconds covered by a transcript record's words (``pipeline.inspect.report.speech_seconds``)."""
    from pipeline.inspect.report import speech_seconds as covered
    from schemas import Transcript

    return covered(Transcript.model_validate(transcript)) if transcript and "segments" in transcript else 0.0
