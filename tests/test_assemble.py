"""Clip assembly and clip-record marking without Ray: ``stages.assemble`` and ``Registry.mark_clips``."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from pipeline.engine.dag import DAG
from schemas import ClipRecord, ClipSync
from stages.assemble import ClipInputs, assemble_clips, primary_track
from stages.clips import ClipOptions
from stages.normalize import NormalizeOptions, normalize


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """5 s of test pattern with a tone, normalised by the real stage (25 fps, 16 kHz)."""
    d = tmp_path_factory.mktemp("assemble")
    src = d / "src.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=5",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=5", "-shortest", "-c:v", "libx264", "-c:a", "aac", str(src)], check=True)
    return normalize("v1", str(src), str(d / "media"), NormalizeOptions())


def test_fixed_windows_are_cut_and_described_without_pose_or_speech(media, tmp_path):
    opts = ClipOptions(mode="fixed", window_s=2.0, min_clip_s=1.0)
    out = assemble_clips(ClipInputs(media=media, source_uri="file:src.mp4", metadata={"language": "en"}), str(tmp_path), opts)
    assert [c.key for c in out.clips] == ["v1-0000", "v1-0001"]  # two whole 2-s windows of 5 s; the tail is dropped
    for c in out.clips:
        assert c.num_frames == 50 and c.members == ["json", "mp4", "wav"]
        assert (tmp_path / f"{c.key}.mp4").stat().st_size > 0 and (tmp_path / f"{c.key}.wav").stat().st_size > 0
        assert "loudness_lufs" in c.quality and c.transcript is None
        assert c.stages == [] and c.skipped_stages == {}  # the executor marks them, not the stage
    assert out.rejects == {}  # fixed mode rejects nothing


def test_primary_track_is_the_face_most_often_in_the_primary_slot(media):
    T = media.num_frames
    pose = {"faces_track": np.full((T, 2), -1, np.int32), "part_confidences": np.ones((T, 5), np.float32)}
    pose["faces_track"][:60, 0] = 3
    pose["faces_track"][60:, 0] = 7
    assert primary_track(pose, 0, 50) == 3 and primary_track(pose, 50, 100) == 7
    assert primary_track({"part_confidences": pose["part_confidences"]}, 0, 10) is None  # pose v1/v2: no face tracks
    assert primary_track({"faces_track": np.full((T, 2), -1, np.int32)}, 0, 10) is None  # nobody on screen


def test_mark_clips_lists_contributing_stages_in_dag_order_and_skip_reasons():
    def clip(sync: bool) -> ClipRecord:
        c = ClipRecord.model_construct(stages=[], skipped_stages={}, sync=ClipSync.model_construct() if sync else None)
        return c

    synced, unsynced = clip(True), clip(False)
    skipped = {"flame": "no FLAME assets"}
    DAG.mark_clips([synced, unsynced], ran={"download", "normalize", "shots", "speech", "pose", "sync", "clips"}, skipped=skipped)
    assert synced.stages == ["shots", "speech", "pose", "sync"]
    assert unsynced.stages == ["shots", "speech", "pose"]  # sync ran, but measured nothing for this clip
    assert synced.skipped_stages == {"flame": "no FLAME assets"}
    # the FLAME stage ran later: listed last, no longer skipped
    DAG.mark_clips([synced], ran={"clips", "pose", "normalize", "flame"}, skipped={})
    assert synced.stages == ["shots", "speech", "pose", "sync", "flame"] and synced.skipped_stages == {}
