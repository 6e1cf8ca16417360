"""Whole-video audio read without holding it: the memory-mapped wav and the blockwise speech band
give exactly what the whole-array reads gave."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

from geometry.syncnet import speech_band_rms
from stages.wav import map_pcm16


@pytest.mark.parametrize("channels,extra", [(1, ["-fflags", "+bitexact"]), (2, []), (1, ["-metadata", "title=with a LIST chunk"])])
def test_the_memory_map_holds_the_samples_soundfile_reads(tmp_path, channels, extra):
    path = str(tmp_path / "a.wav")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=f=440:d=1.3:r=16000", "-ac", str(channels),
                    "-c:a", "pcm_s16le", *extra, path], check=True)
    mapped, sr = map_pcm16(path)
    want, want_sr = sf.read(path, dtype="int16", always_2d=False)
    assert isinstance(mapped, np.memmap) and sr == want_sr == 16000 and mapped.shape == want.shape and np.array_equal(mapped, want)
    flac = str(tmp_path / "a.flac")  # not a wav: read whole, same values
    sf.write(flac, want, sr)
    got, _ = map_pcm16(flac)
    assert not isinstance(got, np.memmap) and np.array_equal(got, want)


def test_the_speech_band_in_blocks_equals_the_whole_array():
    rng = np.random.default_rng(0)
    a16 = rng.normal(0, 3000, 16000 * 5 + 17).clip(-32768, 32767).astype(np.int16)
    as_float = a16.astype(np.float32) / 32768  # what a float wav reader gives
    whole = speech_band_rms(as_float, 16000, 25.0, 130, block=10**6)  # 130 frames: past the audio's end too
    for block in (1, 7, 64):
        assert np.array_equal(speech_band_rms(a16, 16000, 25.0, 130, block=block), whole)
        assert np.array_equal(speech_band_rms(as_float, 16000, 25.0, 130, block=block), whole)
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)).astype(np.float32)
    hum = (0.5 * np.sin(2 * np.pi * 60 * np.arange(16000) / 16000)).astype(np.float32)
    assert speech_band_rms(tone, 16000, 25.0, 25)[5:20].min() > 20 * speech_band_rms(hum, 16000, 25.0, 25)[5:20].max()
