"""Vision stages on real photos (scikit-image's astronaut and camera) composed into videos:
shots (PySceneDetect), MediaPipe pose/hands/face with part confidences, clip selection, crops."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipeline.demo.inputs import _encode, _photo
from schemas import Segment, Transcript, Word
from stages.clips import ClipOptions, make_clips
from stages.normalize import NormalizeOptions, count_frames, normalize, probe
from stages.errors import StageError
from stages.pose import (PoseModels, PoseOptions, _interpolate_in_place, extract_pose, load_pose, pose_track, save_pose,
                          slice_pose)
from stages.select import SelectOptions, select_clips
from stages.shots import detect_shots

FPS = 25


def _video(tmp_path, name: str, frames: np.ndarray):
    """Encode frames (+ a quiet tone track) and normalise: the media record the stages consume."""
    wav = tmp_path / f"{name}.wav"
    t = np.arange(int(len(frames) / FPS * 16000)) / 16000
    sf.write(wav, (0.01 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    _encode(frames, str(wav), str(tmp_path / f"{name}.mp4"))
    return normalize(name, str(tmp_path / f"{name}.mp4"), str(tmp_path / f"{name}_norm"), NormalizeOptions(min_duration_s=0.5))


def _sway(photo: np.ndarray, n: int, size: int = 448, phase: float = 0.0) -> np.ndarray:
    h, w = photo.shape[:2]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        dx = int((w - size) / 2 + 10 * np.sin(2 * np.pi * i / 50 + phase))
        dy = int((h - size) / 2 + 6 * np.sin(2 * np.pi * i / 70))
        out[i] = photo[dy : dy + size, dx : dx + size]
    return out


def _transcript(video_id: str, duration: float, spans: list[tuple[float, float]], speaker: str = "S0") -> Transcript:
    words = []
    for a, b in spans:  # one word every 0.3 s through each span
        t = a
        while t + 0.25 <= b:
            words.append(Word(text="w", start_s=t, end_s=t + 0.25, speaker=speaker))
            t += 0.3
    seg = Segment(start_s=words[0].start_s, end_s=words[-1].end_s, text=" ".join("w" for _ in words), speaker=speaker, words=words)
    return Transcript(video_id=video_id, duration_s=duration, language="en", text=seg.text, raw_text=seg.text,
                      segments=[seg], main_speaker=speaker, asr_backend="test")


@pytest.mark.models
def test_frontal_upper_body_and_blank_frames(tmp_path):
    from stages.pose import PoseModels, PoseOptions

    astro = _photo("astronaut", False)
    frames = _sway(astro, 50)
    frames[20:30] = 0  # a run of blank frames
    media = _video(tmp_path, "astro", frames)
    # the body graph on every frame: its visibility smoothing settles per call, and the claims
    # below are about the graph's output (pose.body_every=3 settles over three times the frames)
    models = PoseModels(PoseOptions(body_every=1))
    arrays = extract_pose(models, media.video_path, media.width, media.height, media.fps, media.num_frames)
    track = pose_track(arrays)  # validates ranges and lengths
    assert track.num_frames == media.num_frames == 50
    conf, present = arrays["part_confidences"], arrays["part_present"]
    names = list(arrays["part_names"])
    face, torso, mouth = names.index("face"), names.index("torso"), names.index("mouth")
    seen = np.r_[0:18, 32:50]  # frames clear of the blank run (tracking needs a frame or two to recover)
    assert conf[seen, face].mean() > 0.7 and conf[seen, torso].mean() > 0.9 and conf[seen, mouth].mean() > 0.7
    knees = arrays["body_visibility"][seen][:, [25, 26]]
    # legs are out of the picture: low once MediaPipe's visibility smoothing (video mode) settles
    assert np.nanmean(knees[-10:]) < 0.3 and np.all(np.nanmean(knees, axis=1) < conf[seen, torso])
    assert arrays["body"].shape == (50, 33, 3) and arrays["face"].shape == (50, 478, 3) and arrays["left_hand"].shape == (50, 21, 3)
    assert np.all((conf >= 0) & (conf <= 1))
    # blank frames: every part confidence 0 and masked, landmarks absent
    assert np.all(conf[21:29] == 0) and not present[21:29].any()
    assert np.isnan(arrays["face"][21:29]).all() and (arrays["num_people"][21:29] == 0).all()
    assert np.isnan(arrays["part_boxes"][21:29]).all()
    assert np.isnan(arrays["body_presence"]).all()  # the legacy graph gives none: stored as NaN, not 0
    # a face box around the photo's face (MediaPipe lips at about x=223, y=147 in the 512 px photo)
    box = np.nanmedian(arrays["part_boxes"][seen, face], axis=0)
    assert box[0] < 223 - 32 < box[2] and box[1] < 147 - 32 < box[3]
    clip = slice_pose(arrays, 5, 15)
    assert clip["part_confidences"].shape == (10, 5) and list(clip["part_names"]) == names


@pytest.mark.models
def test_pose_on_disk_matches_pose_in_memory_and_maps_back_lazily(tmp_path):
    media = _video(tmp_path, "astro", _sway(_photo("astronaut", False), 24))
    models = PoseModels(PoseOptions(stride=2))
    in_memory = extract_pose(models, media.video_path, media.width, media.height, media.fps, media.num_frames)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mapped = extract_pose(models, media.video_path, media.width, media.height, media.fps, media.num_frames, str(scratch))
    assert isinstance(mapped["face"], np.memmap) and sorted(p.name for p in scratch.iterdir())[0] == "body.npy"
    assert in_memory.keys() == mapped.keys()
    for k in in_memory:
        np.testing.assert_array_equal(in_memory[k], mapped[k], err_msg=k)
    assert in_memory["interpolated"][1::2][:-1].all() and not in_memory["interpolated"][::2].any()
    save_pose(str(tmp_path / "pose.npz"), mapped)
    loaded = load_pose(str(tmp_path / "pose.npz"), min_mapped_bytes=1024)  # default 1 MiB: more frames than here
    assert isinstance(loaded["face"], np.memmap) and not isinstance(loaded["part_names"], np.memmap)
    assert loaded.keys() == in_memory.keys() and loaded["fps"] == 25 and list(loaded["part_names"]) == list(in_memory["part_names"])
    for k in in_memory:
        np.testing.assert_array_equal(loaded[k], in_memory[k], err_msg=k)
    # an older, compressed pose.npz loads whole, with the same values
    np.savez_compressed(tmp_path / "old.npz", **in_memory)
    old = load_pose(str(tmp_path / "old.npz"))
    assert not isinstance(old["face"], np.memmap)
    np.testing.assert_array_equal(old["face"], in_memory["face"])
    with pytest.raises(StageError, match="more than the 10 frames probed"):
        extract_pose(models, media.video_path, media.width, media.height, media.fps, 10)
    with pytest.raises(StageError, match="decoded 24 of 30 frames"):
        extract_pose(models, media.video_path, media.width, media.height, media.fps, 30)


def test_skipped_frames_are_interpolated_but_never_across_an_absence():
    a = np.full((7, 2), np.nan, np.float32)
    a[[0, 2, 4, 6]] = [[0, 0], [2, np.nan], [4, 4], [6, 6]]
    _interpolate_in_place(a, np.array([0, 2, 4, 6]), block=1)
    np.testing.assert_array_equal(a[:, 0], [0, 1, 2, 3, 4, 5, 6])
    assert np.isnan(a[[1, 2, 3], 1]).all() and a[5, 1] == 5 and a[0, 1] == 0


def test_two_people_are_counted_and_rejected(tmp_path, pose_models):
    astro = _photo("astronaut", False)
    pair = np.concatenate([astro[:, 40:360], astro[:, 40:360][:, ::-1]], axis=1)  # two people side by side
    frames = np.stack([pair[32:480, :]] * 40)
    media = _video(tmp_path, "pair", frames)
    arrays = extract_pose(pose_models, media.video_path, media.width, media.height, media.fps, media.num_frames)
    assert np.median(arrays["num_people"]) == 2
    t = _transcript("pair", media.duration_s, [(0.1, 1.5)])
    sel = select_clips(media.num_frames, media.fps, media.width, media.height, None, t, arrays, SelectOptions(min_clip_s=0.5))
    assert sel.windows == [] and sel.rejects["several_people"] >= 1


def test_hard_cut_inside_a_speech_turn_gives_two_clips(tmp_path, pose_models):
    astro = _photo("astronaut", False)
    zoom = astro[40:400, 60:420].repeat(2, axis=0).repeat(2, axis=1)[:512, :512]  # another framing: a hard cut
    frames = np.concatenate([_sway(astro, 75), _sway(zoom[..., ::-1].copy(), 75, phase=1.0)])
    media = _video(tmp_path, "cut", frames)
    shots = detect_shots(media)
    assert [s.start_frame for s in shots.shots] == [0, 75]
    arrays = extract_pose(pose_models, media.video_path, media.width, media.height, media.fps, media.num_frames)
    t = _transcript("cut", media.duration_s, [(0.2, 5.8)])  # one turn across the cut
    opts = SelectOptions(min_clip_s=1.0, max_clip_s=10.0, crop="upper_body", min_face_px=0)
    sel = select_clips(media.num_frames, media.fps, media.width, media.height, shots, t, arrays, opts)
    assert len(sel.windows) == 2
    for first, count in sel.windows:
        assert first + count <= 75 or first >= 75  # none crosses the cut
    for x, y, side in sel.crops:  # square crops inside the frame
        assert side > 100 and 0 <= x <= media.width - side and 0 <= y <= media.height - side
    clips = make_clips(media, "src://cut", str(tmp_path / "clips"), ClipOptions(), {}, sel.windows, sel.crops, 256)
    for c in clips:
        p = probe(str(tmp_path / "clips" / f"{c.key}.mp4"))
        assert (p.width, p.height) == (256, 256) == (c.width, c.height) and c.crop_box is not None
        assert count_frames(str(tmp_path / "clips" / f"{c.key}.mp4")) == c.num_frames


def test_selection_filters_count_every_rejection():
    n, fps, h = 250, 25.0, 480
    conf = np.zeros((n, 5), np.float32)
    conf[:, 0], conf[:, 4] = 0.9, 0.9
    present = conf > 0
    boxes = np.full((n, 5, 4), np.nan, np.float32)
    boxes[:, 0] = [100, 100, 160, 160]  # face 60 px high = 0.125 of the frame
    boxes[:, 4] = [60, 200, 260, 480]
    pose = {"part_confidences": conf, "part_present": present, "part_boxes": boxes, "num_people": np.ones(n, np.int32),
            "face_track": np.zeros(n, np.int32), "face_sharpness": np.full(n, 100.0), "part_names": np.array(["face", "mouth", "left_hand", "right_hand", "torso"])}
    t = _transcript("v", n / fps, [(0.0, 9.9)])
    opts = SelectOptions(min_clip_s=2, max_clip_s=4, min_face_px=0)
    sel = select_clips(n, fps, 480, h, None, t, pose, opts)
    # one ~10 s turn split into three equal clips of 2..4 s, back to back
    assert len(sel.windows) == 3 and not sel.rejects and all(50 <= c <= 100 for _, c in sel.windows)
    assert all(f0 + c0 == f1 for (f0, c0), (f1, _) in zip(sel.windows, sel.windows[1:]))
    small = SelectOptions(min_clip_s=2, max_clip_s=4, min_face_height_frac=0.2, min_face_px=0)
    assert select_clips(n, fps, 480, h, None, t, pose, small).rejects == {"face_too_small": 3}
    few_pixels = SelectOptions(min_clip_s=2, max_clip_s=4)  # the default floor: 160 px; this face is 60 px
    assert select_clips(n, fps, 480, h, None, t, pose, few_pixels).rejects == {"face_too_small_px": 3}
    blurry = {**pose, "face_sharpness": np.full(n, 3.0)}
    assert select_clips(n, fps, 480, h, None, t, blurry, opts).rejects == {"motion_blur": 3}
    sparse = _transcript("v", n / fps, [(0.0, 0.3), (1.0, 1.3), (2.0, 2.3), (3.0, 3.3), (4.0, 4.3)])
    assert select_clips(n, fps, 480, h, None, sparse, pose, SelectOptions(min_clip_s=2, max_clip_s=10, turn_gap_s=1.0, min_face_px=0)).rejects == {"too_little_speech": 1}
    hidden = {**pose, "part_present": present.copy()}
    hidden["part_present"][100:150, 0] = False
    sel = select_clips(n, fps, 480, h, None, t, hidden, opts)
    assert sel.rejects["off_screen_speaker"] == 1 and sel.rejected_s["off_screen_speaker"] == pytest.approx(2.0)
    assert all(f + c <= 100 or f >= 150 for f, c in sel.windows)


def test_selection_never_makes_clips_shorter_than_the_minimum_or_sharing_frames():
    n, fps = 300, 25.0
    t = _transcript("v", n / fps, [(0.0, 10.04)])
    sel = select_clips(n, fps, 480, 480, None, t, None, SelectOptions(min_clip_s=6, max_clip_s=10))
    assert [c for _, c in sel.windows] == [250] and sel.rejects["too_short"] == 1
    # turns closer than twice the padding merge instead of overlapping
    t2 = _transcript("v", n / fps, [(0.0, 3.0), (3.5, 7.0)])
    sel = select_clips(n, fps, 480, 480, None, t2, None, SelectOptions(min_clip_s=1, max_clip_s=4, turn_gap_s=0.1, turn_pad_s=0.4))
    frames = [f for f0, c in sel.windows for f in range(f0, f0 + c)]
    assert len(frames) == len(set(frames))


def test_odd_crop_size_is_refused():
    from pydantic import ValidationError

    from pipeline.engine.config import load_config

    with pytest.raises(ValidationError, match="multiple of 2"):
        load_config(None, ["clips.crop_size=255"])


# ---------------------------------------------------------------------------------------------
# head pose (geometry/head_pose.py) and the non_frontal filter


def test_head_pose_recovers_known_rotations_of_the_canonical_face():
    from scipy.spatial.transform import Rotation

    from geometry.head_pose import canonical_face, head_pose_deg

    W, H, f = 640, 480, 640.0
    for yaw, pitch, roll in [(0, 0, 0), (30, 0, 0), (-40, 10, 0), (15, -20, 10)]:
        # a face turned to the image's right by `yaw`, tilted up by `pitch`, leaning clockwise by `roll`
        R = Rotation.from_euler("ZYX", [roll, -yaw, -pitch], degrees=True).as_matrix()
        P = canonical_face() @ R.T + [0.0, 0.0, 60.0]
        xy = np.stack([f * P[:, 0] / P[:, 2] + W / 2, f * P[:, 1] / P[:, 2] + H / 2], 1) / [W, H]
        assert np.allclose(head_pose_deg(xy, W, H), (yaw, pitch, roll), atol=0.5), (yaw, pitch, roll)


def test_head_pose_of_real_photos_mirrored_and_turned(pose_models):
    from geometry.head_pose import head_pose_deg
    from geometry.landmarks import LandmarkModels, analyse_frame

    astro = _photo("astronaut", False)
    h, w = astro.shape[:2]
    yaw, _, roll = head_pose_deg(analyse_frame(LandmarkModels(), astro)["face"][:, :2], w, h)
    m_yaw, _, m_roll = head_pose_deg(analyse_frame(LandmarkModels(), np.ascontiguousarray(astro[:, ::-1]))["face"][:, :2], w, h)
    assert abs(yaw) < 10 and abs(m_yaw + yaw) < 10 and abs(m_roll + roll) < 10  # frontal; a mirror flips yaw and roll
    # the same face turned 30 degrees in 3D: its mesh (with MediaPipe's depth) rotated about the vertical axis
    face = analyse_frame(LandmarkModels(), astro)["face"][:468] * [w, h, w]
    centre = face.mean(axis=0)
    a = np.radians(30)
    turned = (face - centre) @ np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]]).T + centre
    t_yaw = head_pose_deg(turned[:, :2] / [w, h], w, h)[0]
    assert abs(abs(t_yaw - yaw) - 30) < 10, t_yaw


def test_profile_anchor_is_rejected_as_non_frontal(tmp_path, pose_models):
    camera = _photo("camera", False)  # scikit-image's cameraman: a three-quarter profile
    media = _video(tmp_path, "profile", _sway(camera, 75))
    arrays = extract_pose(pose_models, media.video_path, media.width, media.height, media.fps, media.num_frames)
    assert arrays["head_pose"].shape == (media.num_frames, 3)
    assert np.nanmedian(np.abs(arrays["head_pose"][:, 0])) > 35
    t = _transcript("profile", media.duration_s, [(0.1, 2.9)])
    opts = SelectOptions(min_clip_s=1.0, min_face_px=0, min_face_confidence=0.0, min_torso_confidence=0.0, min_face_sharpness=0.0)
    sel = select_clips(media.num_frames, media.fps, media.width, media.height, None, t, arrays, opts)
    assert sel.windows == [] and sel.rejects == {"non_frontal": 1}
    wide = opts.model_copy(update={"max_yaw_deg": 90.0, "max_pitch_deg": 90.0})
    assert len(select_clips(media.num_frames, media.fps, media.width, media.height, None, t, arrays, wide).windows) == 1
