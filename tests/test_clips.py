"""Clip cutting: every clip holds exactly the frames of its window, in order, in sync with its audio,
whether it is cut alone, with neighbours from one decode, or after a seek."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

import media_fixtures as mf
from stages.clips import ClipOptions, Cut, group_cuts, make_clips
from stages.normalize import NormalizeOptions, normalize

STEP = 4  # grey level of frame i is STEP * i: neighbouring frames differ by 4 levels


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    """A normalised counter video: 60 frames at 25 fps, frame i flat grey STEP*i, with a tone."""
    folder = tmp_path_factory.mktemp("counter")
    frames = np.repeat((np.arange(60) * STEP).astype(np.uint8)[:, None, None, None], 64, 1).repeat(96, 2).repeat(3, 3)
    src = str(folder / "count.mp4")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x64", "-r", "25",
                    "-i", "-", *mf.tone_args(2.4), "-c:v", "libx264", "-crf", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", src],
                   input=frames.tobytes(), check=True)
    return src, normalize("count", src, str(folder / "norm"), NormalizeOptions())


def _levels(path: str, width: int, height: int) -> list[int]:
    return [int(round(f.mean() / STEP)) for f in mf.gray_frames(path, width, height)]


@pytest.mark.parametrize("per_process,gap_s", [(1, 4.0), (8, 4.0), (2, 0.2)])
def test_each_clip_holds_exactly_its_windows_frames(counter, tmp_path, per_process, gap_s):
    """One clip per process, all from one decode, and groups split by count and by a gap (a seek):
    clip k's frame j is source frame first_k + j every time. Windows are given out of order."""
    src, media = counter
    windows = [(40, 6), (2, 5), (9, 7), (50, 10)]
    opts = ClipOptions(cuts_per_process=per_process, max_gap_s=gap_s)
    clips = make_clips(media, src, str(tmp_path / "c"), opts, {}, windows)
    assert [(c.start_s, c.num_frames) for c in clips] == [(f / 25, n) for f, n in windows]
    for clip, (first, count) in zip(clips, windows):
        assert _levels(str(tmp_path / "c" / f"{clip.key}.mp4"), 96, 64) == list(range(first, first + count)), clip.key


def test_cropped_clips_from_one_decode_keep_their_frames(counter, tmp_path):
    src, media = counter
    windows, crops = [(0, 4), (20, 4)], [(0, 0, 64), (32, 0, 64)]
    clips = make_clips(media, src, str(tmp_path / "c"), ClipOptions(), {}, windows, crops, 32)
    for clip, (first, count) in zip(clips, windows):
        assert (clip.width, clip.height) == (32, 32)
        assert _levels(str(tmp_path / "c" / f"{clip.key}.mp4"), 32, 32) == list(range(first, first + count))


def test_a_flash_and_a_beep_stay_together_in_a_clip(tmp_path):
    """The flash at 1.6 s and its beep land on the same clip time (a one-frame lag is 40 ms)."""
    src = str(tmp_path / "fb.mp4")
    mf.flash_beep_video(src)
    media = normalize("fb", src, str(tmp_path / "n"), NormalizeOptions())
    [a, b] = make_clips(media, src, str(tmp_path / "c"), ClipOptions(), {}, [(5, 10), (30, 20)])
    flash_frame = int(np.argmax(mf.gray_frames(str(tmp_path / "c" / f"{b.key}.mp4"), b.width, b.height).mean(axis=(1, 2))))
    audio, sr = sf.read(str(tmp_path / "c" / f"{b.key}.wav"))
    beep_s = np.flatnonzero(np.abs(audio) > 0.2)[0] / sr
    assert flash_frame == 10 and beep_s == pytest.approx(0.4, abs=0.5 / 25), (flash_frame, beep_s)


def test_cuts_are_grouped_by_count_and_gap():
    cut = lambda first, n: Cut(f"{first}.mp4", first, n)  # noqa: E731
    cuts = [cut(300, 25), cut(0, 50), cut(50, 50), cut(100, 50), cut(160, 10)]
    groups = group_cuts(cuts, 25.0, ClipOptions(cuts_per_process=3, max_gap_s=1.0))
    assert [[c.first_frame for c in g] for g in groups] == [[0, 50, 100], [160], [300]]
    groups = group_cuts(cuts, 25.0, ClipOptions(cuts_per_process=8, max_gap_s=0.2))
    assert [[c.first_frame for c in g] for g in groups] == [[0, 50, 100], [160], [300]]
    groups = group_cuts(cuts, 25.0, ClipOptions(cuts_per_process=8, max_gap_s=10))
    assert [[c.first_frame for c in g] for g in groups] == [[0, 50, 100, 160, 300]]
