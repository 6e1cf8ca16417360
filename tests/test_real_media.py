"""Known answers on real recordings (media/real/, held-out files of tests/real_media.py): one in-process
ingest with default gates over genuine files and negatives made from them.

* genuine talking heads give clips covering most of their speech, with a sync verdict and every
  gate's check recorded;
* a dub (one file's picture, another's voice) and a still frame under its own voice give none;
* audio moved 3 frames early is measured at +3 (± 1);
* a two-shot with the voice alternating between two real files crops the face whose voice is heard;
* broadcast curation: the genuine files pass every curation gate, a subtitle across the mouth is
  rejected, and a rebroadcast copy of a genuine file (re-encoded, cropped, a logo) is dropped as a
  duplicate of it, which is kept with its group recorded.
"""

from __future__ import annotations

import json
import os

import pytest

from curation_media import LOGO, ZH_SUBTITLE, _draw, _vf, make_subtitles
from real_media import build_cases, make_dub, make_shift, make_still, make_two_shot, real_path, speech_seconds

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, ray_session):
    from pipeline.engine.config import load_config
    from pipeline.engine.runner import run_ingest

    d = tmp_path_factory.mktemp("real")
    two_shot, halves = make_two_shot(str(d / "two_shot.mp4"), "vox_00098", "vox_00473")
    inputs = {
        "genuine_a": real_path("retalking_4"),
        "genuine_b": real_path("vox_00098"),
        "dub": make_dub(str(d / "dub.mp4"), "vox_00098", "vox_620900105"),
        "still": make_still(str(d / "still.mp4"), "vox_517600055"),
        "shift": make_shift(str(d / "shift.mp4"), "vox_00098", 3),
        "two_shot": two_shot,
        "sub_mouth": make_subtitles(str(d / "sub_mouth.mp4"), "retalking_1", [ZH_SUBTITLE], y="290", span=(2.0, 4.2)),
        "zz_rebroadcast": _vf(str(d / "zz_rebroadcast.mp4"), "retalking_4", "crop=iw*0.96:ih*0.96:iw*0.02:ih*0.02," + _draw(LOGO, 28, "20", "20"),
                              crf=30),
    }
    # the recordings are English talk: the sources file says so, as a data engineer's would
    (d / "s.csv").write_text("path,id,language\n" + "".join(f"{p},{k},en\n" for k, p in inputs.items()))
    run_ingest(str(d / "s.csv"), str(d / "run"), load_config(None, []), echo=lambda m: None)
    return d / "run", halves


def _clips(run, name: str) -> dict:
    work = run / "work" / "ledger"
    vid = next(v for v in os.listdir(work) if v.rsplit("-", 1)[0] == name)
    return json.loads((work / vid / "clips.json").read_text())["output"]


def _stage(run, name: str, stage: str) -> dict:
    work = run / "work" / "ledger"
    vid = next(v for v in os.listdir(work) if v.rsplit("-", 1)[0] == name)
    return json.loads((work / vid / f"{stage}.json").read_text())["output"]


def _speech_s(run, name: str) -> float:
    work = run / "work" / "ledger"
    vid = next(v for v in os.listdir(work) if v.rsplit("-", 1)[0] == name)
    return speech_seconds(json.loads((work / vid / "speech.json").read_text())["output"])


def test_genuine_real_files_give_clips_with_every_check_recorded(real_run):
    run, _ = real_run
    for name in ("genuine_a", "genuine_b"):
        out = _clips(run, name)
        clip_s = sum(c["end_s"] - c["start_s"] for c in out["clips"])
        assert out["clips"], (name, out["rejected_s"])
        assert clip_s >= 0.7 * _speech_s(run, name), (name, clip_s, out["rejected_s"])
        for c in out["clips"]:
            assert c["sync"]["verdict"] in ("pass", "unverified") and abs(c["sync"]["offset_frames"]) <= 3
            assert c["checks"]["sync"]["verdict"] == c["sync"]["verdict"]
            assert {"face_px", "face_sharpness", "speech_ratio", "snr_db", "music_score"} <= set(c["checks"])
            assert all(g["verdict"] != "fail" for g in c["checks"].values())


def test_dub_and_still_frame_give_no_clip(real_run):
    run, _ = real_run
    dub, still = _clips(run, "dub"), _clips(run, "still")
    assert dub["clips"] == [] and set(dub["rejected_s"]) & {"voice_over", "av_unsynced"}, dub["rejected_s"]
    assert still["clips"] == [] and "not_speaking" in still["rejected_s"], still["rejected_s"]


def test_audio_three_frames_early_is_measured_at_its_shift(real_run):
    run, _ = real_run
    offsets = [c["sync"]["offset_frames"] for c in _clips(run, "shift")["clips"]]
    assert offsets and all(abs(o - 3) <= 1 for o in offsets), offsets


def test_two_shot_crops_the_face_whose_voice_is_heard(real_run):
    run, halves = real_run
    out = _clips(run, "two_shot")
    width = json.loads((run / "work" / "ledger" / next(v for v in os.listdir(run / "work" / "ledger") if v.startswith("two_shot")) / "normalize.json").read_text())["output"]["width"]
    total = right = 0.0
    for c in out["clips"]:
        mid = (c["start_s"] + c["end_s"]) / 2
        side = "left" if mid < halves[0][1] else "right"
        x, _, side_px = c["crop_box"]
        got = "left" if x + side_px / 2 < width / 2 else "right"
        total += c["end_s"] - c["start_s"]
        right += (c["end_s"] - c["start_s"]) * (got == side)
    assert total > 0 and right / total >= 0.9, (total, right, out["rejected_s"])


def test_negatives_are_made_from_the_real_files(tmp_path):
    """The benchmark's case list: every group has genuine files and each kind of negative."""
    cases = build_cases(str(tmp_path), groups=("held_out",), shifts=(3,))
    kinds = {c.kind for c in cases}
    assert kinds == {"genuine", "dub", "shift", "still", "blur", "voice_over", "two_shot"}
    assert all(os.path.getsize(c.path) > 10_000 for c in cases)


def test_curation_passes_genuine_files_rejects_text_over_the_mouth_and_drops_a_rebroadcast(real_run):
    run, _ = real_run
    for name in ("genuine_a", "genuine_b"):
        curated = _stage(run, name, "curate")
        assert len(curated["clips"]) == len(_clips(run, name)["clips"]), curated["rejected_s"]  # nothing lost to curation
        for c in curated["clips"]:
            assert {"brisque", "camera_pan", "head_movement_avg", "hand_over_mouth", "text_over_mouth"} <= set(c["checks"])
            assert c["curation"]["fingerprint"]["audio"] and c["curation"]["text_boxes"] == []
    mouth = _stage(run, "sub_mouth", "curate")
    assert mouth["clips"] == [] and "burned_in_text" in mouth["rejected_s"], mouth["rejected_s"]
    assert _stage(run, "zz_rebroadcast", "curate")["clips"], "the copy itself passes every gate"
    stats = json.loads((run / "stats.json").read_text())
    assert stats["rejects_by_reason"].get("duplicate", 0) >= 1, stats["rejects_by_reason"]  # ("shift" copies genuine_b too)
    manifest = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    assert not any(r["video_id"].startswith("zz_rebroadcast") for r in manifest)
    assert {"genuine_a", "genuine_b"} <= {r["video_id"].rsplit("-", 1)[0] for r in manifest}  # the first of each group stays
    kept = next(c for c in _stage(run, "genuine_a", "curate")["clips"])
    copy = next(c for c in _stage(run, "zz_rebroadcast", "curate")["clips"])
    registry = [json.loads(line) for line in (run / "fingerprints.jsonl").read_text().splitlines()]
    assert kept["key"] in {e["key"] for e in registry} and copy["key"] not in {e["key"] for e in registry}
    import tarfile

    with tarfile.open(next((run / "shards").glob("*.tar"))) as t:
        shard_json = {m.name: json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".json")}
    record = next(v for v in shard_json.values() if v["key"] == kept["key"])
    assert record["curation"]["duplicate_group"] == kept["key"] and copy["key"] in record["curation"]["duplicate_of"]
