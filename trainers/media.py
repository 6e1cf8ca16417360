"""Audio and video files in and out of the trainers (ffmpeg through ffmpeg-python)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

SR = 16000


def read_audio(path: str | Path) -> torch.Tensor:
    """Any audio/video file → 16 kHz mono float32 (decoded by ffmpeg)."""
    import ffmpeg

    try:
        out, _ = (ffmpeg.input(str(path)).output("pipe:", format="f32le", ac=1, ar=SR)
                  .run(capture_stdout=True, capture_stderr=True))
    except ffmpeg.Error as e:
        raise ValueError(f"cannot decode audio from {path}: {e.stderr.decode(errors='replace')[-300:]}") from None
    wave = np.frombuffer(out, np.float32)
    if not len(wave):
        raise ValueError(f"{path} has no audio samples")
    return torch.from_numpy(wave.copy())


def write_video(path: str | Path, frames: Iterable[np.ndarray], size: int, fps: float, audio: str | None = None) -> Path:
    """Encode RGB uint8 frames (size×size) as H.264 mp4, muxing ``audio`` (cut to the video's length)."""
    import ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    streams = [ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{size}x{size}", framerate=fps)]
    if audio:
        streams.append(ffmpeg.input(str(audio)).audio)
    proc = (ffmpeg.output(*streams, str(path), vcodec="libx264", pix_fmt="yuv420p", acodec="aac", shortest=None,
                          loglevel="error").overwrite_output().run_async(pipe_stdin=True))
    for frame in frames:
        proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg could not write {path}")
    return path
