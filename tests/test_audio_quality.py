"""Audio quality figures against known answers: calibrated loudness, a clipped sine, a known SNR,
music vs real speech vs speech over music."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import SR, mix_at, music, tone_at_lufs
from stages.audio_quality import AudioQualityOptions, audio_quality, audio_reject, clipping_ratio, loudness_lufs, music_score, snr_db
from talking_fixtures import package_file

OPTS = AudioQualityOptions()


def _real_speech() -> list[np.ndarray]:
    wav, sr = sf.read(package_file("pyannote.audio", "sample", "sample.wav"), dtype="float32")
    assert sr == SR
    return [wav[int(a * sr): int(b * sr)] for a, b in ((10.6, 14.4), (18.2, 21.4), (22.0, 26.5), (0.5, 6.5))]


@pytest.mark.parametrize("lufs", [-23.0, -30.0, -14.0])
def test_loudness_of_a_calibrated_tone(lufs):
    assert loudness_lufs(tone_at_lufs(lufs), SR) == pytest.approx(lufs, abs=0.5)
    assert np.isnan(loudness_lufs(tone_at_lufs(lufs, seconds=0.3), SR))  # shorter than one gating block


def test_clipping_ratio_of_an_overdriven_sine():
    t = np.arange(SR) / SR
    overdriven = np.clip(1.5 * np.sin(2 * np.pi * 197.3 * t), -1, 1)  # not a divisor of the rate: phases average out
    expected = 1 - 2 / np.pi * np.arcsin(1 / 1.5)  # share of the period where |1.5 sin| >= 1
    assert clipping_ratio((overdriven * 32767).astype(np.int16)) == pytest.approx(expected, abs=0.01)
    assert clipping_ratio((0.5 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16)) == 0.0


def test_snr_of_a_tone_over_noise_at_a_known_level():
    rng = np.random.default_rng(0)
    noise = (0.01 * rng.standard_normal(4 * SR)).astype(np.float32)
    x = noise.copy()
    start = 64 * 512  # on a frame boundary (32-ms frames)
    t = np.arange(len(x) - start) / SR
    x[start:] += (0.1 * np.sqrt(2) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # power 0.01 = 20 dB over 1e-4
    frames = len(x) // int(0.032 * SR)
    speech = np.zeros(frames, bool)
    speech[64:] = True
    expected = 10 * np.log10((0.01 + 1e-4) / 1e-4)
    assert snr_db(x, SR, speech) == pytest.approx(expected, abs=0.5)
    assert snr_db(x, SR) == pytest.approx(expected, abs=1.0)  # no mask: frames above the median over the quietest 10 %


def _real_talk_windows() -> list[np.ndarray]:
    """2.5-s windows (the length of a short clip) of the vendored real talking-head recordings' audio."""
    import subprocess

    from real_media import CALIBRATION, HELD_OUT, real_path

    out = []
    for name in CALIBRATION + HELD_OUT:
        pcm = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", real_path(name), "-ac", "1", "-ar", str(SR), "-f", "s16le", "-"],
                             check=True, capture_output=True).stdout
        x = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768
        out += [x[i: i + int(2.5 * SR)] for i in range(0, len(x) - int(2.5 * SR) + 1, SR)]
    return out


def test_music_score_separates_music_speech_and_speech_over_music():
    """Real talk (pyannote's sample and the 13 vendored recordings, which reach 0.20 in a 2.5-s
    window: sustained vowels are persistent tonal peaks too) stays under the threshold; music alone
    and music as loud as the speech are over it; a louder music bed always scores higher."""
    speech = _real_speech()
    alone = [music_score(s, SR) for s in speech + _real_talk_windows()]
    over = {snr: [music_score(mix_at(s, music(len(s) / SR + 1, seed=i), snr), SR) for i, s in enumerate(speech)] for snr in (6.0, 0.0)}
    only = [music_score(music(6.0, seed=i), SR) for i in range(3)]
    assert max(alone) < OPTS.audio_max_music_score < min(over[0.0]) and min(only) > 0.4, (max(alone), over, only)
    assert all(quiet < loud for quiet, loud in zip(over[6.0], over[0.0])) and min(over[6.0]) > max(alone[:len(speech)])


def test_audio_reject_reasons():
    speech = _real_speech()[0]
    q = audio_quality((speech * 32767).astype(np.int16), SR, OPTS)
    assert audio_reject(q, OPTS) is None and {"loudness_lufs", "snr_db", "clipping_ratio", "music_score"} <= set(q)
    quiet = audio_quality((speech * 32767 * 10 ** (-40 / 20)).astype(np.int16), SR, OPTS)
    assert audio_reject(quiet, OPTS) == "too_quiet"
    loud = audio_quality((np.clip(speech * 20, -1, 1) * 32767).astype(np.int16), SR, OPTS)
    assert audio_reject(loud, OPTS) == "clipped_audio"
    with_music = audio_quality((mix_at(speech, music(5, seed=3), 0.0) * 32767).astype(np.int16), SR, OPTS)
    assert audio_reject(with_music, OPTS) == "background_music"
    silence = audio_quality(np.zeros(SR, np.int16), SR, OPTS)
    assert silence["loudness_lufs"] == -120.0 and audio_reject(silence, OPTS) == "too_quiet"
