"""Leaner shards (issue 28): the fixed-point landmark codec, pose.npz layout 2 next to layout 1 in
the loader and both trainers' views, face slots left out of the video's pose.npz, and
``schema_version`` only at the top of a record."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import webdataset as wds
from clip_records import clip_json
from paha_data import draw_frames, encode_mp4, envelope

from geometry.head_pose import canonical_face
from geometry.landmark_codec import (FIXED_POINT_KEYS, FIXED_SUFFIX, LAYOUT_KEY, MAX_ABS, NAN_CODE, STEP, SlotPadded,
                                     decode_landmarks, decode_pose_member, encode_landmarks, encode_pose_member, pad_slots,
                                     trim_slots)
from schemas import SCHEMA_VERSION, ClipRecord, PART_NAMES, Segment, Transcript, Word
from stages.pose import load_pose, save_pose, write_clip_pose
from trainers.data import LoaderConfig, decode_sample, make_loader

PX = np.array([1920.0, 1080.0, 1920.0])  # a 1080p frame: x, y in pixels; z is in units of the width


def _px_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmax(np.abs(a.astype(np.float64) - b) * PX, initial=0.0))


def _face_track(T: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 478, 3) a talking-head mesh in frame units: MediaPipe's canonical face (468 points and 10
    iris points), face-high ~40 % of a 1080p frame, drifting and turning a little, with detector jitter."""
    face = canonical_face()
    face = np.concatenate([face, face[rng.integers(0, 468, 10)]]) / 40.0  # cm -> ~0.4 frame heights for a 16 cm face
    out = np.empty((T, 478, 3), np.float32)
    for t in range(T):
        a = 0.2 * np.sin(t / 15)
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        p = face @ rot.T
        out[t] = p + [0.5 + 0.02 * np.sin(t / 20), 0.45, 0] + rng.normal(0, 2e-4, p.shape)
    return out


def _clip_pose(T: int, rng: np.random.Generator, conf: np.ndarray | None = None, boxes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A clip's pose arrays as ``slice_pose`` gives them (and ``face_embedding``), every key of the real member."""
    face = _face_track(T, rng)
    face[3] = np.nan  # a frame without the face
    body = np.stack([np.tile(rng.uniform(0.2, 0.8, (33, 3)), (1, 1)) for _ in range(T)]).astype(np.float32)
    body[:, 25:, 1] = np.linspace(1.5, 4.9, 8)  # legs extrapolated far below the frame, as MediaPipe does
    body[:, :, 2] = rng.uniform(-4.4, 1.4, (T, 33))
    left, right = np.full((T, 21, 3), np.nan, np.float32), np.full((T, 21, 3), np.nan, np.float32)
    right[T // 2:] = rng.uniform(-0.07, 0.4, (T - T // 2, 21, 3))
    ids = np.stack([np.zeros(T, np.int32), np.full(T, -1, np.int32)], axis=1)
    slot_nan = lambda *s: np.where(ids[(...,) + (None,) * len(s)] >= 0, rng.uniform(0, 100, (T, 2, *s)), np.nan).astype(np.float32)  # noqa: E731
    conf = rng.uniform(0, 1, (T, 5)).astype(np.float32) if conf is None else conf
    boxes = rng.uniform(0, 400, (T, 5, 4)).astype(np.float32) if boxes is None else boxes
    return {
        "body": body, "body_visibility": rng.uniform(0, 1, (T, 33)).astype(np.float32), "left_hand": left, "right_hand": right,
        "left_hand_score": np.zeros(T, np.float32), "right_hand_score": np.r_[np.zeros(T // 2), np.full(T - T // 2, 0.9)].astype(np.float32),
        "face_sharpness": rng.uniform(300, 600, T).astype(np.float32), "face_track": np.zeros(T, np.int32),
        "num_people": np.ones(T, np.int32), "interpolated": np.zeros(T, bool), "skipped": np.zeros(T, bool),
        "faces_track": ids, "faces_box": slot_nan(4), "faces_mouth": slot_nan(), "faces_head_pose": slot_nan(3),
        "part_confidences": conf, "part_present": conf > 0, "part_boxes": boxes,
        "head_pose": rng.uniform(-20, 5, (T, 3)).astype(np.float32), "body_presence": np.full((T, 33), np.nan, np.float32),
        "part_names": np.array(PART_NAMES), "fps": np.array(25.0, np.float32), "frame_size": np.array([1920, 1080], np.int32),
        "face": face, "face_embedding": rng.normal(0, 0.1, 128).astype(np.float32),
    }


def _npz(arrays: dict[str, np.ndarray], layout: int) -> bytes:
    """A clip's pose.npz member: layout 1 as the 1.x pipeline wrote it (compressed float32), layout 2 by ``write_clip_pose``."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **(arrays if layout == 1 else encode_pose_member(arrays)))
    return buf.getvalue()


# -- the codec -------------------------------------------------------------------------------


def test_known_answers_and_the_error_bound():
    # codes are round(v / 2**-15): 1/3 -> 10923; 0.5 and -0.25 exactly; half a pixel right of a
    # 1920-px frame (1 + 1/3840) -> 32777; ties round to even (1.5 steps -> 2, -0.5 steps -> 0)
    v = np.array([[1 / 3, 0.5, -0.25], [1 + 1 / 3840, 3 * 2.0 ** -16, -(2.0 ** -16)]], np.float32)
    back = decode_landmarks(encode_landmarks(v))
    np.testing.assert_array_equal(back, np.array([[10923 / 32768, 0.5, -0.25], [32777 / 32768, 2 * 2.0 ** -15, 0.0]], np.float32))
    assert back.dtype == np.float32 and STEP == 2.0 ** -15
    # anywhere a landmark can be, inside the frame or extrapolated off it: at most STEP / 2 off
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1, 2, (200, 478, 3)), rng.uniform(-6, 6, (200, 478, 3)),
                             rng.uniform(-60000, 60000, (20, 478, 3))]).astype(np.float32)
    err = np.abs(decode_landmarks(encode_landmarks(values)).astype(np.float64) - values)
    assert err.max() <= STEP / 2
    assert _px_error(decode_landmarks(encode_landmarks(values[:400])), values[:400]) < 0.03  # < 0.1 px asked; 0.059 px at 3840


def test_nan_round_trips_and_out_of_range_is_refused():
    a = _face_track(30, np.random.default_rng(1))
    a[0] = np.nan  # a whole frame absent, first and last: the frame differences start and end on the sentinel
    a[-1] = np.nan
    a[10, 5, 1] = np.nan  # one coordinate
    a[11, 5, 1] = -(MAX_ABS - 1)  # the most negative value next to a NaN: differences wrap modulo 2**32
    a[12, 5, 1] = MAX_ABS - 1
    back = decode_landmarks(encode_landmarks(a))
    assert np.array_equal(np.isnan(back), np.isnan(a))
    assert np.nanmax(np.abs(back.astype(np.float64) - a)) <= STEP / 2
    assert (np.round(a[11, 5, 1] / STEP) != NAN_CODE)  # a value is never mistaken for the sentinel
    for bad in (np.inf, -np.inf, MAX_ABS, -1e9):
        with pytest.raises(ValueError, match="finite and below"):
            encode_landmarks(np.array([[bad]], np.float32))
    with pytest.raises(ValueError, match="byte planes"):
        decode_landmarks(np.zeros((3, 5), np.uint8))


def test_planes_dtype_shape_and_size():
    T = 125
    face = _face_track(T, np.random.default_rng(2))
    planes = encode_landmarks(face)
    assert planes.dtype == np.uint8 and planes.shape == (4, T, 478, 3) and planes.flags.c_contiguous
    assert decode_landmarks(planes).shape == (T, 478, 3)
    for shape in ((0, 478, 3), (1, 3), (7,)):  # no frames, one frame, a plain series
        assert decode_landmarks(encode_landmarks(np.zeros(shape, np.float32))).shape == shape

    def deflated(**arrays) -> int:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return len(buf.getvalue())

    # on the demo's real meshes the member is 3.7x smaller than deflated float32 (docs/BENCHMARKS.md)
    assert deflated(face=planes) < deflated(face=face) / 2.5


# -- pose.npz layouts ----------------------------------------------------------------------


def test_both_layouts_decode_to_the_dense_float32_arrays(tmp_path):
    pose = _clip_pose(60, np.random.default_rng(3))
    old, new = decode_pose_member(_npz(pose, 1)), decode_pose_member(_npz(pose, 2))
    assert old.keys() == new.keys() == pose.keys()
    for k, a in pose.items():
        assert new[k].dtype == a.dtype and new[k].shape == a.shape, k
        if k in FIXED_POINT_KEYS:
            assert np.array_equal(np.isnan(new[k]), np.isnan(a)), k
            assert np.nanmax(np.abs(new[k].astype(np.float64) - a), initial=0) <= STEP / 2, k
        else:
            np.testing.assert_array_equal(new[k], a, err_msg=k)
        np.testing.assert_array_equal(old[k], a, err_msg=k)
    # the writer the pipeline calls: compressed, layout 2, readable by name
    path = tmp_path / "k-0000.pose.npz"
    write_clip_pose(str(path), pose)
    with np.load(path) as z:
        assert int(z[LAYOUT_KEY]) == 2 and "face" not in z.files and f"face{FIXED_SUFFIX}" in z.files
        only = decode_pose_member(z, keys=("part_confidences", "face"))
    assert only.keys() == {"part_confidences", "face"} and only["face"].dtype == np.float32
    assert path.stat().st_size < len(_npz(pose, 1)) / 2
    newer = encode_pose_member(pose)
    newer[LAYOUT_KEY] = np.array(3, np.int32)
    with pytest.raises(ValueError, match="layout 3 is newer"):
        decode_pose_member(newer)


# -- face slots ----------------------------------------------------------------------------


def _video_pose(T: int, K: int, used: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    faces = np.full((T, K, 478, 3), np.nan, np.float32)
    ids = np.full((T, K), -1, np.int32)
    for s in range(used):
        faces[:, s] = _face_track(T, rng)
        ids[:, s] = s
    faces[5, 0] = np.nan
    ids[5, 0] = -1
    return {"faces": faces, "faces_track": ids, "faces_box": np.where(ids[..., None] >= 0, 1.0, np.nan).astype(np.float32),
            "faces_mouth": np.where(ids >= 0, 0.2, np.nan).astype(np.float32),
            "faces_head_pose": np.where(ids[..., None] >= 0, 3.0, np.nan).astype(np.float32),
            "part_confidences": np.ones((T, 5), np.float32), "fps": np.array(25.0, np.float32)}


def test_trim_and_pad_slots_and_the_padded_view():
    pose = _video_pose(40, 3, 1)
    trimmed = trim_slots(pose)
    assert trimmed["faces"].shape == (40, 1, 478, 3) and trimmed["faces_track"].shape == (40, 1) and int(trimmed["faces_slots"]) == 3
    assert trim_slots(_video_pose(10, 2, 2))["faces"].shape[1] == 2  # both used: nothing left out
    assert trim_slots(_video_pose(10, 2, 0))["faces"].shape[1] == 1  # slot 0 is always stored
    kept = dict(pose, faces_mouth=pose["faces_mouth"].copy())
    kept["faces_mouth"][7, 2] = 0.1  # something in slot 2: it stays (lossless)
    assert trim_slots(kept)["faces"].shape[1] == 3
    for k, a in pad_slots(trimmed).items():
        np.testing.assert_array_equal(a, pose[k], err_msg=k)
    lazy = pad_slots(trimmed, lazy=True)["faces"]
    assert isinstance(lazy, SlotPadded) and lazy.shape == pose["faces"].shape and len(lazy) == 40
    faces = pose["faces"]
    for key in (np.s_[:, 0], np.s_[:, 2], np.s_[:, -1], np.s_[3], np.s_[3:9], np.s_[3:9, :, :4, :2], np.s_[[1, 4], 1],
                np.s_[7, 1:], np.s_[..., 0], np.s_[2:4, 0, 10]):
        np.testing.assert_array_equal(lazy[key], faces[key], err_msg=str(key))
    assert np.shares_memory(lazy[:, 0], trimmed["faces"])  # a stored slot alone is a view (a map stays one)
    np.testing.assert_array_equal(np.asarray(lazy), faces)
    with pytest.raises(IndexError):
        lazy[:, 3]


def test_the_video_pose_npz_leaves_empty_slots_out_and_loads_as_before(tmp_path):
    pose = _video_pose(50, 2, 1)
    save_pose(str(tmp_path / "pose.npz"), pose)
    loaded = load_pose(str(tmp_path / "pose.npz"), min_mapped_bytes=1024)
    assert loaded.keys() == pose.keys() | {"face"}
    assert isinstance(loaded["faces"], SlotPadded) and isinstance(loaded["face"], np.memmap)
    for k, a in pose.items():
        np.testing.assert_array_equal(np.asarray(loaded[k]), a, err_msg=k)
    np.savez(tmp_path / "untrimmed.npz", **pose)  # what save_pose wrote before: still loads, same arrays
    assert (tmp_path / "pose.npz").stat().st_size < 0.55 * (tmp_path / "untrimmed.npz").stat().st_size
    old = load_pose(str(tmp_path / "untrimmed.npz"), min_mapped_bytes=1024)
    assert isinstance(old["faces"], np.memmap)
    np.testing.assert_array_equal(old["faces"], pose["faces"])


# -- the loader and both trainers' views read either layout ---------------------------------


def _samples(T: int = 24, size: int = 64) -> dict[int, dict[str, bytes]]:
    """One clip as a 1.x sample (float32 pose.npz) and as a 2.x sample (layout 2), same key, with the
    members of both trainers' views (mp4 + pose.npz for paha, flame.npz for facial)."""
    import soundfile as sf

    rng = np.random.default_rng(5)
    env = envelope(rng, T)
    frames, boxes, conf = draw_frames(env, size, rng)
    wav = io.BytesIO()
    sf.write(wav, (0.3 * np.repeat(env, 640) * np.sin(np.arange(T * 640) / 9)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    flame = io.BytesIO()
    np.savez(flame, shape=np.zeros(100, np.float32), exp=rng.normal(0, 0.1, (T, 50)).astype(np.float32),
             pose=np.zeros((T, 6), np.float32), cam=np.tile(np.float32([8, 0, 0]), (T, 1)), valid=np.ones(T, bool))
    pose = _clip_pose(T, rng, conf, boxes)
    key, members = "layout-0000", ["json", "mp4", "wav", "pose.npz", "flame.npz"]
    base = {"__key__": key, "json": clip_json(key, T, members, width=size, height=size), "mp4": encode_mp4(frames),
            "wav": wav.getvalue(), "flame.npz": flame.getvalue()}
    return {layout: {**base, "pose.npz": _npz(pose, layout)} for layout in (1, 2)}


def _assert_same(a, b, path: str = "") -> None:
    import torch

    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0)), path
    else:
        assert a == b, path


@pytest.mark.parametrize("view", ["facial", "paha"])
def test_both_trainers_views_read_a_1x_and_a_2x_sample_identically(view):
    samples = _samples()
    cfg = LoaderConfig(urls=[], view=view, window_frames=12, image_size=32)
    old, new = (decode_sample(cfg, 0, samples[layout]) for layout in (1, 2))
    assert old is not None and new is not None
    _assert_same(old, new)  # the part arrays are stored as they were: identical, not only within the codec's error


def test_the_loader_reads_shards_of_both_layouts(tmp_path):
    samples = _samples()
    urls = []
    for layout, sample in samples.items():
        urls.append(str(tmp_path / f"l{layout}-000000.tar"))
        with wds.TarWriter(urls[-1]) as w:
            w.write(sample)
    raw = [next(iter(make_loader(LoaderConfig(urls=[u], view="raw")))) for u in urls]
    old, new = (decode_pose_member(r["pose.npz"]) for r in raw)
    assert old.keys() == new.keys() and all(old[k].dtype == new[k].dtype for k in old)
    assert _px_error(new["face"], old["face"]) < 0.1 and np.array_equal(np.isnan(new["face"]), np.isnan(old["face"]))
    paha = [next(iter(make_loader(LoaderConfig(urls=[u], view="paha", window_frames=12, image_size=32, random_window=False)))) for u in urls]
    _assert_same(*paha)


# -- schema_version at the top of a record only ---------------------------------------------


def _transcript() -> Transcript:
    w = Word(text="hi", start_s=0.1, end_s=0.4, speaker="S0")
    return Transcript(video_id="v", duration_s=1.0, language="en", text="hi", raw_text="hi",
                      segments=[Segment(start_s=0.1, end_s=0.4, text="hi", speaker="S0", words=[w])], asr_backend="test")


def test_schema_version_only_at_the_top_of_a_record():
    t = _transcript()
    top = json.loads(t.to_json())  # the speech stage's ledger output: a top-level record
    assert top["schema_version"] == SCHEMA_VERSION == "2.2.0"
    assert "schema_version" not in top["segments"][0] and "schema_version" not in top["segments"][0]["words"][0]
    clip = ClipRecord.model_validate_json(clip_json("v-0000", 25, ["json"], transcript=t))  # nested in a clip
    text = clip.model_dump_json()
    assert text.count('"schema_version"') == 1 and json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert "schema_version" not in clip.model_dump(mode="json")["transcript"]
    assert ClipRecord.model_validate_json(text) == clip


def test_nested_records_still_parse_1x_json():
    t = _transcript()
    old = json.loads(clip_json("v-0000", 25, ["json"], transcript=t))

    def stamp(node):  # what 1.x wrote: schema_version in every record
        if isinstance(node, dict):
            if "start_s" in node or "video_id" in node:
                node["schema_version"] = "1.4.0"
            for v in node.values():
                stamp(v)
        elif isinstance(node, list):
            for v in node:
                stamp(v)

    stamp(old)
    assert json.dumps(old).count('"schema_version"') == 4  # clip, transcript, segment, word
    clip = ClipRecord.model_validate_json(json.dumps(old))
    assert clip.schema_version == "1.4.0" and clip.transcript.segments[0].words[0].text == "hi"
    again = json.loads(clip.model_dump_json())
    assert again["schema_version"] == "1.4.0" and "schema_version" not in again["transcript"]


def test_a_crafted_slot_count_is_refused():
    trimmed = trim_slots(_video_pose(8, 2, 1))
    trimmed["faces_slots"] = np.array(10**9, np.int32)
    with pytest.raises(ValueError, match="faces_slots"):
        pad_slots(trimmed)
