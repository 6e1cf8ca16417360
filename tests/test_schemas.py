import json

import pytest
from pydantic import ValidationError

from schemas import (
    ALL_RECORDS, SCHEMA_VERSION, ClipRecord, FlameFit, ManifestRow, PoseTrack, RunStats, Segment, SourceItem,
    Transcript, Word, export_json_schemas,
)


def _clip(**kw):
    base = dict(
        key="vid-0000", clip_uid="u", video_id="vid", index=0, source_uri="/x.mp4", start_s=0.0, end_s=2.0,
        source_duration_s=10.0, fps=25.0, num_frames=50, sample_rate_hz=16000, num_audio_samples=32000,
        width=480, height=480, members=["json", "mp4", "wav"],
    )
    base.update(kw)
    return ClipRecord(**base)


def test_clip_round_trip_and_version():
    c = _clip()
    assert c.schema_version == SCHEMA_VERSION
    assert ClipRecord.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"num_frames": 40}, "do not span"),
        ({"num_audio_samples": 30000}, "do not span"),
        ({"end_s": 11.0, "num_frames": 275, "num_audio_samples": 176000}, "past the source end"),
        ({"key": "other-0000"}, "does not start with the video id"),
        ({"key": "vid.x-0000"}, "String should match pattern"),
        ({"extra_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_clip_rejects_inconsistent(kw, message):
    with pytest.raises(ValidationError, match=message):
        _clip(**kw)


def test_transcript_times_monotonic_and_inside_media():
    w = lambda t, s, e: Word(text=t, start_s=s, end_s=e, score=0.9)  # noqa: E731
    seg = Segment(start_s=0.0, end_s=1.0, text="ab", words=[w("a", 0.0, 0.4), w("b", 0.5, 1.0)])
    Transcript(video_id="v", duration_s=2.0, language="zh", text="ab", raw_text="ab", segments=[seg], asr_backend="x")
    with pytest.raises(ValidationError, match="not monotonic"):
        Segment(start_s=0, end_s=1, text="ba", words=[w("b", 0.5, 1.0), w("a", 0.0, 0.4)])
    with pytest.raises(ValidationError, match="past the media end"):
        Transcript(video_id="v", duration_s=0.8, language="zh", text="ab", raw_text="ab", segments=[seg], asr_backend="x")
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        Word(text="a", start_s=0, end_s=1, score=1.5)
    with pytest.raises(ValidationError, match="ends"):
        Word(text="a", start_s=1.0, end_s=0.5)


def test_pose_track_confidences_and_lengths():
    ok = dict(num_frames=2, fps=25, part_confidences=[[1, 0.5, 0, 0, 1]] * 2, part_present=[[True, True, False, False, True]] * 2, backend="t")
    PoseTrack(**ok)
    with pytest.raises(ValidationError, match="outside"):
        PoseTrack(**{**ok, "part_confidences": [[1.2, 0.5, 0, 0, 1]] * 2})
    with pytest.raises(ValidationError, match="expected 2"):
        PoseTrack(**{**ok, "num_frames": 2, "part_confidences": [[1, 0.5, 0, 0, 1]] * 3})
    with pytest.raises(ValidationError, match="absent part"):
        PoseTrack(**{**ok, "part_confidences": [[1, 0.5, 0.3, 0, 1]] * 2})


def test_flame_fit_shapes():
    T = 3
    ok = dict(num_frames=T, shape=[0.0] * 100, exp=[[0.0] * 50] * T, pose=[[0.0] * 6] * T, cam=[[1, 0, 0]] * T, valid=[True] * T, backend="deca")
    FlameFit(**ok)
    with pytest.raises(ValidationError, match="exp has 2 frames"):
        FlameFit(**{**ok, "exp": [[0.0] * 50] * 2})
    with pytest.raises(ValidationError, match="shape has 99"):
        FlameFit(**{**ok, "shape": [0.0] * 99})


def test_manifest_and_stats_validators():
    with pytest.raises(ValidationError, match="not a sha256"):
        ManifestRow(key="v-0000", shard="a.tar", video_id="v", duration_s=1, member_bytes={"mp4": 1}, member_sha256={"mp4": "zz"})
    with pytest.raises(ValidationError, match="!= videos_in"):
        RunStats(videos_in=3, videos_ok=1, videos_failed=1, videos_resumed=0, source_hours=0, clip_hours=0, clips=0,
                 shards=0, wall_s=0, started_at="t", finished_at="t")


def test_source_item_refuses_unsafe_ids():
    for bad in ("../x", "a.b", "a/b", "", "-x"):
        with pytest.raises(ValidationError):
            SourceItem(video_id=bad, uri="/x", kind="file")


def test_export_json_schemas(tmp_path):
    paths = export_json_schemas(str(tmp_path))
    assert len(paths) == len(ALL_RECORDS)
    clip_schema = json.loads((tmp_path / "clip.schema.json").read_text())
    assert clip_schema["x-schema-version"] == SCHEMA_VERSION
    assert "num_frames" in clip_schema["properties"]
    import jsonschema

    jsonschema.validate(json.loads(_clip().to_json()), clip_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**json.loads(_clip().to_json()), "num_frames": -1}, clip_schema)
