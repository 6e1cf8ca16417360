"""Memory-mapped 16-bit PCM wav files: the stages that walk a whole video's audio (sync, clip
cutting and the audio filters) read an hour of it without holding it (115 MB as int16, 230 MB as
float32, and a few times that in temporaries)."""

from __future__ import annotations

import os
import struct

import numpy as np


def map_pcm16(path: str) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)`` of the wav at ``path``: an int16 memory map, ``(N,)`` for mono and
    ``(N, channels)`` otherwise; a wav that is not plain 16-bit PCM is read whole by soundfile (as
    int16, the same values). Slices of the map read only their pages."""
    layout = _pcm16_layout(path)
    if layout is None:
        import soundfile as sf

        return sf.read(path, dtype="int16", always_2d=False)
    offset, frames, channels, sr = layout
    shape = (frames,) if channels == 1 else (frames, channels)
    if frames == 0:
        return np.zeros(shape, np.int16), sr
    return np.memmap(path, np.int16, "r", offset, shape), sr


def _pcm16_layout(path: str) -> tuple[int, int, int, int] | None:
    """(data offset, frames, channels, sample rate) of a RIFF/WAVE 16-bit PCM file, else None."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(length)
                f.seek(length & 1, 1)
            elif cid == b"data":
                offset = f.tell()
                break
            else:
                f.seek(length + (length & 1), 1)
    if fmt is None or len(fmt) < 16:
        return None
    tag, channels, sr, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first 2 bytes
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag != 1 or bits != 16 or channels < 1:
        return None
    data = min(length, size - offset)  # a streamed wav may state 0xFFFFFFFF
    return offset, data // (2 * channels), channels, sr
