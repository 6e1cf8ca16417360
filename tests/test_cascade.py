"""The cascade (stages/candidates.py): cheap passes pick the spans the dense models look at, and
inside them the landmarks are those of the exhaustive pass."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video
from schemas import Segment, Shot, ShotList, Transcript, Word
from stages.candidates import FaceScan, candidate_mask, scan_faces, spans_of
from stages.frames import read_spans
from stages.pose import PoseModels, PoseOptions, extract_pose

FPS = 25.0


def _transcript(words: list[tuple[float, float]], duration: float) -> Transcript:
    ws = [Word(text=f"w{i}", start_s=a, end_s=b) for i, (a, b) in enumerate(words)]
    seg = Segment(start_s=words[0][0], end_s=words[-1][1], text=" ".join(w.text for w in ws), words=ws)
    return Transcript(video_id="v", duration_s=duration, language="en", text=seg.text, raw_text=seg.text, segments=[seg], asr_backend="test")


def test_candidates_need_a_large_face_speech_and_a_long_shot():
    n = 250
    frames = np.arange(0, n, 10)
    big_then_small = FaceScan(frames, np.ones(len(frames), np.int32), np.where(frames < 100, 0.2, 0.03).astype(np.float32), 10)
    words = _transcript([(0.0, 2.0), (6.0, 8.0)], n / FPS)  # speech in frames 0-50 and 150-200
    mask = candidate_mask(big_then_small, n, FPS, words, None, min_face_frac=0.06, pad_s=0.5, min_shot_s=1.0)
    assert mask[:50].all() and not mask[70:].any()  # no speech at 2-6 s, faces too small from 4 s
    big = FaceScan(frames, np.ones(len(frames), np.int32), np.full(len(frames), 0.2, np.float32), 10)
    shots = ShotList(video_id="v", num_frames=n, fps=FPS, backend="test",
                     shots=[Shot(start_frame=0, end_frame=150), Shot(start_frame=150, end_frame=160), Shot(start_frame=160, end_frame=n)])
    mask = candidate_mask(big, n, FPS, words, shots, min_face_frac=0.06, pad_s=0.5, min_shot_s=1.0)
    assert not mask[150:160].any()  # a 0.4 s shot cannot give a clip
    assert mask[165:200].all() and not mask[70:135].any()
    assert spans_of(mask)[0][0] == 0
    # no transcript, no shots: the faces alone decide, padded by the scan interval + 0.5 s
    mask = candidate_mask(big_then_small, n, FPS, None, None, min_face_frac=0.06, pad_s=0.5, min_shot_s=1.0)
    assert spans_of(mask) == [(0, 90 + 10 + 12 + 1)]


@pytest.fixture(scope="module")
def broll_then_anchor(tmp_path_factory):
    """3 s of B-roll (testsrc2, a tone), then a real photo talking (pipeline.demo.inputs), hard cut, 480x480."""
    d = tmp_path_factory.mktemp("cascade")
    anchor = str(d / "anchor.mp4")
    make_talking_video(anchor, DEMO_VIDEOS[0])
    out = str(d / "mix.mp4")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=480x480:rate=25:duration=3",
                    "-f", "lavfi", "-i", "sine=f=300:d=3", "-i", anchor, "-filter_complex", "[0:v][1:a][2:v][2:a]concat=n=2:v=1:a=1[v][a]",
                    "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-r", "25", "-c:a", "aac", out],
                   check=True)
    n = int(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames",
                            "-of", "csv=p=0", out], capture_output=True, text=True, check=True).stdout.strip())
    return out, n


def test_read_spans_gives_exactly_the_frames_of_the_spans(broll_then_anchor):
    path, n = broll_then_anchor
    got = list(read_spans(path, 480, 480, [(3, 6), (80, 82)]))
    assert [t for t, _ in got] == [3, 4, 5, 80, 81]
    full = {}
    for t, rgb in read_spans(path, 480, 480, [(0, 82)]):
        full[t] = rgb
    assert all(np.array_equal(full[t], rgb) for t, rgb in got)  # the same pixels as a plain decode


def test_cascade_meshes_the_anchor_only_and_as_the_exhaustive_pass_does(broll_then_anchor):
    path, n = broll_then_anchor
    models = PoseModels(PoseOptions(body_every=1))
    scan = scan_faces(models.faces, path, 480, 480, 10)
    assert (scan.faces[scan.frames < 75] == 0).all() and (scan.max_height_frac[scan.frames >= 80] > 0.1).mean() > 0.9
    spans = spans_of(candidate_mask(scan, n, FPS, None, None, 0.06, 0.5, 1.0))
    assert len(spans) == 1 and 50 <= spans[0][0] <= 75 and spans[0][1] == n
    cascade = extract_pose(models, path, 480, 480, FPS, n, spans=spans)
    exhaustive = extract_pose(models, path, 480, 480, FPS, n)
    a, b = spans[0]
    assert cascade["skipped"][:a].all() and not cascade["skipped"][a:].any() and not exhaustive["skipped"].any()
    assert np.isnan(cascade["face"][:a]).all() and not cascade["part_present"][:a].any()
    fa, fb = cascade["faces"][75:, 0, :, :2], exhaustive["faces"][75:, 0, :, :2]
    ok = np.isfinite(fa).all(axis=(1, 2)) & np.isfinite(fb).all(axis=(1, 2))
    assert ok.mean() > 0.9
    assert np.linalg.norm((fa[ok] - fb[ok]) * 480, axis=-1).mean() < 1.0  # px


def test_body_every_interpolates_body_and_hands_between_analysed_frames(broll_then_anchor):
    path, n = broll_then_anchor
    every = extract_pose(PoseModels(PoseOptions(body_every=1, cascade=False)), path, 480, 480, FPS, n)
    third = extract_pose(PoseModels(PoseOptions(body_every=3, cascade=False)), path, 480, 480, FPS, n)
    ba, bb = every["body"][80:, :, :2], third["body"][80:, :, :2]
    ok = np.isfinite(ba).all(axis=(1, 2)) & np.isfinite(bb).all(axis=(1, 2))
    assert ok.mean() > 0.9  # the gaps were filled, not left empty
    seen = every["body_visibility"][80:] > 0.5  # what the graph saw, not legs guessed off screen
    err = np.linalg.norm((ba - bb) * 480, axis=-1)[ok[:, None] & seen]
    assert seen.sum() > 1000 and np.median(err) < 6.0, np.median(err)  # an anchor sways slowly: 8 fps follows the shoulders
    # the face mesh still ran on every frame
    assert np.array_equal(np.isnan(every["face"][:, 0, 0]), np.isnan(third["face"][:, 0, 0]))
