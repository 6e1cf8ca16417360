"""Reading decoded frames: the one frame reader of the stages, the engine and the reports.

ffmpeg decodes (single-threaded, frame-exact: ``select`` on the decoded frame number, never a seek)
and writes raw RGB to a pipe; ``pipe_frames`` pairs each frame with its index and kills ffmpeg when
the caller stops early. Every reader holds one frame at a time, however long the video.

    read_frames(video, w, h)                 every frame, in order
    read_frames_at(video, w, h, indices)     the frames at ``indices`` (sorted, unique)
    read_frames_exact(video, indices, w, h)  a list of the frames at ``start + i``; an error when the video ends early
    read_every(video, w, h, every)           frames 0, every, 2·every … (the cascade's face scan)
    read_spans(video, w, h, spans)           every frame inside ``[a, b)`` spans (the cascade's dense pass)
"""

from __future__ import annotations

import itertools
import subprocess
from typing import Iterator

import numpy as np


def pipe_frames(cmd: list[str], width: int, height: int, indices: Iterator[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Run ffmpeg ``cmd`` (raw rgb24 on stdout) and pair each frame it writes with the next of
    ``indices``; stops at the end of either. The process is killed when the caller stops early."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # an undrained stderr pipe can block ffmpeg
    size = width * height * 3
    try:
        for t in indices:
            buf = proc.stdout.read(size)
            if len(buf) < size:
                return
            yield t, np.frombuffer(buf, np.uint8).reshape(height, width, 3)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def read_frames(video_path: str, width: int, height: int) -> Iterator[np.ndarray]:
    """RGB frames (H, W, 3) uint8 of a video, decoded by ffmpeg one at a time (bounded memory)."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", video_path, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    for _, rgb in pipe_frames(cmd, width, height, itertools.count()):
        yield rgb


def read_frames_at(video_path: str, width: int, height: int, indices: list[int], max_terms: int = 200) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, RGB frame)`` of the frames ``indices`` (sorted, unique): ffmpeg's ``select`` filter
    passes only those through colour conversion and the pipe (every frame is still decoded). More
    than ``max_terms`` frames: a full decode, keeping the wanted ones (the filter expression is
    evaluated on every frame)."""
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    if len(wanted) > max_terms:
        keep = set(wanted)
        for t, rgb in enumerate(read_frames(video_path, width, height)):
            if t in keep:
                yield t, rgb
            if t >= wanted[-1]:
                return
        return
    expr = "+".join(f"eq(n\\,{i})" for i in wanted)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", video_path, "-vf", f"select={expr}",
           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    yield from pipe_frames(cmd, width, height, iter(wanted))


def read_frames_exact(path: str, indices: list[int], width: int, height: int, start: int = 0) -> list[np.ndarray]:
    """RGB frames ``start + i`` for ``i`` in ``indices`` of a video of ``width`` x ``height``, in one
    frame-exact ffmpeg pass (``read_frames_at``). Raises ``ValueError`` when the video
    ends early."""
    from .normalize import count_frames

    wanted = [start + i for i in indices]
    got = dict(read_frames_at(path, width, height, wanted))
    if len(got) < len(set(wanted)):
        raise ValueError(f"{path} ends at frame {count_frames(path)}, before frame {max(wanted)}")
    return [got[t] for t in wanted]


def read_every(video_path: str, width: int, height: int, every: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, RGB frame)`` of frames 0, ``every``, 2·``every`` …: ffmpeg decodes every frame but
    converts and pipes only those (``select``)."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", video_path, "-vf", f"select=not(mod(n\\,{every}))",
           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    yield from pipe_frames(cmd, width, height, iter(range(0, 1 << 62, every)))


def read_spans(video_path: str, width: int, height: int, spans: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, RGB frame)`` of every frame inside ``spans`` (``[a, b)``, sorted, disjoint), in one
    decoding pass (frame-exact: ``select`` on the decoded frame number, no seeking)."""
    if not spans:
        return
    expr = "+".join(f"between(n\\,{a}\\,{b - 1})" for a, b in spans)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", video_path, "-vf", f"select={expr}",
           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    yield from pipe_frames(cmd, width, height, (t for a, b in spans for t in range(a, b)))


def read_clip_frames(video_path: str, width: int, height: int, start_s: float, offsets: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, RGB frame)`` of the frames ``offsets`` (sorted, unique) counted from ``start_s``:
    ffmpeg seeks there and decodes only up to the last one (analysis of a clip's frames, where a
    frame more or less at the seek point does not matter; cutting uses the frame-exact readers)."""
    wanted = sorted(set(int(i) for i in offsets))
    if not wanted:
        return
    expr = "+".join(f"eq(n\\,{i})" for i in wanted)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-ss", f"{start_s:.3f}", "-i", video_path,
           "-frames:v", str(len(wanted)), "-vf", f"select={expr}", "-fps_mode", "passthrough",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    yield from pipe_frames(cmd, width, height, iter(wanted))
