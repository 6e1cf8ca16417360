"""A catalogue of inputs that behave like real uploads, generated with ffmpeg and numpy (no binary
fixtures), each with a known answer: a drawn circle, a marker at a known source pixel, a one-frame
flash and a beep at the same presentation time, tagged audio tracks with different tones.

Phones store portrait video landscape with a display matrix; Debian's ffmpeg 5.1 no longer writes
one from ``-metadata:s:v rotate``, so ``set_display_rotation`` patches the matrix into the track's
``tkhd`` box, which is what a phone writes.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
import struct
import subprocess

import numpy as np

FPS = 25
SR = 48000
CIRCLE_RADIUS = 0.25  # of the displayed height
MARKER = (0.12, 0.15)  # marker centre, as a fraction of the coded width and height
MARKER_HALF = 0.03  # half side, fraction of the coded height


def ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _encode_frames(path: str, frames: np.ndarray, fps: float, extra_in: list[str], extra_out: list[str]) -> None:
    h, w = frames.shape[1:3]
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
           "-i", "-", *extra_in, *extra_out, path]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def tone_args(seconds: float, freq: float = 440.0, sr: int = SR, beep_t: float | None = None) -> list[str]:
    """lavfi audio input: a quiet tone, or (``beep_t``) silence with a 40 ms beep at ``beep_t``."""
    if beep_t is None:
        expr = f"0.3*sin(2*PI*{freq}*t)"
    else:
        expr = f"if(between(t\\,{beep_t}\\,{beep_t + 0.04})\\,0.8*sin(2*PI*1000*t)\\,0)"
    return ["-f", "lavfi", "-i", f"aevalsrc={expr}:s={sr}:d={seconds}"]


def shapes_frames(coded_w: int, coded_h: int, sar: float, n: int) -> np.ndarray:
    """``n`` identical RGB frames of the coded size: a white circle that is round as *displayed*
    (squeezed by the pixel aspect in the coded frame) and a red square marker near the top left."""
    import cv2

    disp_w = round(coded_w * sar)
    img = np.zeros((coded_h, disp_w, 3), np.uint8)
    cv2.circle(img, (disp_w // 2, coded_h // 2), round(CIRCLE_RADIUS * coded_h), (255, 255, 255), -1, lineType=cv2.LINE_AA)
    img = cv2.resize(img, (coded_w, coded_h), interpolation=cv2.INTER_AREA) if disp_w != coded_w else img
    mx, my, half = round(MARKER[0] * coded_w), round(MARKER[1] * coded_h), round(MARKER_HALF * coded_h)
    img[my - half: my + half, max(0, mx - round(half / sar)): mx + round(half / sar)] = (255, 0, 0)
    return np.repeat(img[None], n, axis=0)


def marker_source_xy(coded_w: int, coded_h: int, sar: float) -> tuple[float, float]:
    """Centre of the marker in coded source pixels."""
    mx, my, half = round(MARKER[0] * coded_w), round(MARKER[1] * coded_h), round(MARKER_HALF * coded_h)
    return (max(0, mx - round(half / sar)) + mx + round(half / sar)) / 2, my


def shapes_video(path: str, coded_w: int, coded_h: int, sar: float = 1.0, seconds: float = 3.0, rotation_deg: int = 0) -> None:
    """Circle + marker video with a tone; ``sar`` written into the H.264 VUI; ``rotation_deg``
    (clockwise) written as a display matrix."""
    frames = shapes_frames(coded_w, coded_h, sar, round(seconds * FPS))
    num, den = sar.as_integer_ratio() if sar != 1 else (1, 1)
    _encode_frames(path, frames, FPS, tone_args(seconds),
                   ["-vf", f"setsar={num}/{den}", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-shortest"])
    if rotation_deg:
        set_display_rotation(path, rotation_deg)


def set_display_rotation(path: str, degrees: int) -> None:
    """Write a display matrix rotating the first video track by ``degrees`` clockwise into its
    ``tkhd`` box (ffprobe then reports ``rotation=-degrees``)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    i = data.find(b"tkhd")
    if i < 0:
        raise ValueError(f"{path}: no tkhd box")
    version = data[i + 4]
    # after type: version/flags (4), times + track id + reserved + duration (20 or 32), reserved (8),
    # layer, alternate group, volume, reserved (8), then the 3x3 matrix
    offset = i + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    c, s = round(math.cos(math.radians(degrees))), round(math.sin(math.radians(degrees)))
    struct.pack_into(">9i", data, offset, c << 16, s << 16, 0, (-s) << 16, c << 16, 0, 0, 0, 1 << 30)
    with open(path, "wb") as f:
        f.write(bytes(data))


def flash_beep_video(path: str, size: tuple[int, int] = (320, 240), seconds: float = 4.0, flash_t: float = 1.6,
                     audio_offset_s: float = 0.0, video_extra_s: float = 0.0, fps: str = "25", pix_fmt: str = "yuv420p") -> None:
    """A dark video with one white frame at presentation time ``flash_t`` and a beep at the same
    presentation time. ``audio_offset_s`` > 0: the audio stream starts that late (< 0: the video
    does); ``video_extra_s``: the video runs that much longer than the audio (< 0: shorter)."""
    w, h = size
    v_len = seconds + max(0.0, video_extra_s)
    a_len = seconds + max(0.0, -video_extra_s)
    v_shift, a_shift = max(0.0, -audio_offset_s), max(0.0, audio_offset_s)
    tmp_v, tmp_a = path + ".v.mp4", path + ".a.wav"
    ff("-f", "lavfi", "-i", f"color=0x202020:s={w}x{h}:r={fps}:d={v_len},drawbox=enable='between(t\\,{flash_t - v_shift - 0.001}\\,"
       f"{flash_t - v_shift + 0.5 / float(Fraction(fps))})':t=fill:c=white", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt, tmp_v)
    ff(*tone_args(a_len, beep_t=flash_t - a_shift), "-c:a", "pcm_s16le", tmp_a)
    ff("-itsoffset", f"{v_shift}", "-i", tmp_v, "-itsoffset", f"{a_shift}", "-i", tmp_a, "-map", "0:v", "-map", "1:a",
       "-c:v", "copy", "-c:a", "aac", path)
    os.remove(tmp_v)
    os.remove(tmp_a)


def interlaced_video(path: str, size: tuple[int, int] = (720, 576), sar: str = "64/45", seconds: float = 2.0) -> None:
    """PAL-like 25i: a high-contrast pattern moving fast, captured at 50 fields/s and woven into
    25 frames (``tinterlace=interleave_top``), anamorphic 16:9 (SAR 64:45), with a tone."""
    w, h = size
    t = np.arange(round(seconds * 50))[:, None, None]
    x = np.arange(w)[None, None, :]
    y = np.arange(h)[None, :, None]
    pattern = ((np.sin((x - 12 * t) / 9.0) + np.sin(y / 40.0)) > 0).astype(np.uint8) * 220
    frames = np.repeat(np.broadcast_to(pattern, (len(t), h, w))[..., None], 3, axis=3)
    _encode_frames(path, np.ascontiguousarray(frames), 50, tone_args(seconds),
                   ["-vf", f"tinterlace=mode=interleave_top,setfield=tff,setsar={sar}", "-r", "25", "-c:v", "libx264", "-preset",
                    "ultrafast", "-flags", "+ildct+ilme", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"])


def two_track_video(path: str, seconds: float = 3.0) -> None:
    """Two audio tracks: English at 440 Hz (first), Mandarin at 880 Hz (tagged ``chi``)."""
    ff("-f", "lavfi", "-i", f"testsrc=s=320x240:r=25:d={seconds}", *tone_args(seconds, 440), *tone_args(seconds, 880),
       "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
       "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=chi", path)


def dead_channel_video(path: str, seconds: float = 3.0) -> None:
    """Stereo whose right channel is silent (a lavalier on one channel, as many field recordings are)."""
    ff("-f", "lavfi", "-i", f"testsrc=s=320x240:r=25:d={seconds}", *tone_args(seconds, 440),
       "-filter_complex", "[1:a]pan=stereo|c0=c0|c1=0*c0[a]", "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast",
       "-pix_fmt", "yuv420p", "-c:a", "aac", path)


def plain_video(path: str, size: tuple[int, int], seconds: float = 2.5, fps: str = "25", pix_fmt: str = "yuv420p",
                extra: tuple[str, ...] = ()) -> None:
    """testsrc video with a tone in any size, rate, pixel format (``extra``: more output options).
    Odd sizes (which H.264 4:2:0 cannot code) go into FFV1, as screen captures and old codecs allow."""
    codec = ["-c:v", "ffv1"] if size[0] % 2 or size[1] % 2 else ["-c:v", "libx264", "-preset", "ultrafast"]
    ff("-f", "lavfi", "-i", f"testsrc=s={size[0]}x{size[1]}:r={fps}:d={seconds}", *tone_args(seconds), *codec,
       "-pix_fmt", pix_fmt, *extra, "-c:a", "aac", "-shortest", path)


def vfr_video(path: str, seconds: float = 3.0) -> None:
    """Variable frame rate: 50 fps capture with irregularly dropped frames, timestamps kept (intervals
    of 20, 40 and 60 ms), as phones record in low light."""
    ff("-f", "lavfi", "-i", f"testsrc=s=320x240:r=50:d={seconds}", *tone_args(seconds), "-vf", "select=not(mod(n\\,3))+not(mod(n\\,4))",
       "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", path)


# ---------------------------------------------------------------------------------------------
# measurements


def gray_frames(path: str, width: int, height: int, extra: tuple[str, ...] = ()) -> np.ndarray:
    """(T, H, W) float grey frames decoded by ffmpeg (``extra``: e.g. ``-noautorotate``)."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", *extra, "-i", path, "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width).astype(np.float32)


def rgb_frame(path: str, width: int, height: int, index: int = 0) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)[index]


def blob_aspect(mask: np.ndarray) -> float:
    """Width / height of a blob from its second moments (1.0 for a circle; robust to anti-aliasing)."""
    ys, xs = np.nonzero(mask)
    return float(np.sqrt(xs.var() / ys.var()))


def combing(frames: np.ndarray) -> float:
    """Interlace combing: mean positive product of a line's differences to the lines above and
    below (a zig-zag between fields); near 0 for progressive pictures."""
    mid, up, down = frames[:, 1:-1], frames[:, :-2], frames[:, 2:]
    return float(np.clip((mid - up) * (mid - down), 0, None).mean())
