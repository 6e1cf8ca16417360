"""FLAME layer and DECA encoder on files the tests build in the official layouts."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from model_builders import build_flame_files
from geometry.flame import AssetError, load_flame_pickle, load_landmark_embedding
from geometry.flame_layer import FlameLayer, project_orthographic
from stages.errors import StageError
from stages.flame import fit_clip, load_flame_models, smooth, split_codes
from stages.flame_model import build_deca_encoder, load_deca_encoder, refine_with_landmarks


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_flame_files(str(tmp_path_factory.mktemp("flame")))


@pytest.fixture(scope="module")
def flame(assets):
    return FlameLayer(load_flame_pickle(assets["flame_model"]), load_landmark_embedding(assets["landmark_embedding"])).double()


def numpy_lbs(m: dict, shape, exp, pose) -> np.ndarray:
    """Reference FLAME in plain numpy/scipy (one sample)."""
    sd = m["shapedirs"]
    v = m["v_template"] + sd[:, :, :100] @ shape + sd[:, :, 300:350] @ exp
    J = m["J_regressor"] @ v
    full = np.concatenate([pose[:3], np.zeros(3), pose[3:], np.zeros(6)]).reshape(5, 3)
    R = Rotation.from_rotvec(full).as_matrix()
    v = v + (m["posedirs"].reshape(-1, 36) @ (R[1:] - np.eye(3)).reshape(-1)).reshape(-1, 3)
    parents = [-1, 0, 1, 1, 1]
    G = []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = J[j] - (J[parents[j]] if j else 0)
        G.append(local if j == 0 else G[parents[j]] @ local)
    G = np.stack(G)
    for j in range(5):
        G[j, :3, 3] -= G[j, :3, :3] @ J[j]
    T = np.einsum("vj,jab->vab", m["weights"], G)
    return np.einsum("vab,vb->va", T, np.c_[v, np.ones(len(v))])[:, :3]


def test_loads_official_layout_without_chumpy(assets):
    assert "chumpy" not in sys.modules
    m = load_flame_pickle(assets["flame_model"])
    assert m["shapedirs"].shape[1:] == (3, 400) and m["posedirs"].shape[1:] == (3, 36) and m["J_regressor"].shape[0] == 5
    lmk = load_landmark_embedding(assets["landmark_embedding"])
    assert lmk["full_lmk_faces_idx"].shape == (1, 68) and lmk["dynamic_lmk_faces_idx"].shape == (79, 17)
    with pytest.raises(AssetError, match="FLAME model not found"):
        load_flame_pickle(assets["flame_model"] + ".missing")
    with pytest.raises(StageError, match="FLAME model not found") as e:  # the stage reports it with its reason
        load_flame_models(assets["flame_model"] + ".missing", assets["deca_checkpoint"], None)
    assert e.value.reason == "missing_asset"


def test_lbs_matches_numpy_reference_and_zero_is_template(assets, flame):
    m = load_flame_pickle(assets["flame_model"])
    rng = np.random.default_rng(1)
    shape, exp, pose = rng.normal(0, 1, 100), rng.normal(0, 1, 50), rng.normal(0, 0.3, 6)
    verts, lmk = flame(*(torch.tensor(x)[None] for x in (shape, exp, pose)))
    np.testing.assert_allclose(verts[0].numpy(), numpy_lbs(m, shape, exp, pose), atol=1e-7, rtol=1e-6)
    zero, _ = flame(torch.zeros(1, 100, dtype=torch.float64), torch.zeros(1, 50, dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64))
    np.testing.assert_allclose(zero[0].numpy(), m["v_template"], atol=1e-9)
    assert lmk.shape == (1, 68, 3)


def test_jaw_rotation_moves_only_the_jaw(assets, flame):
    m = load_flame_pickle(assets["flame_model"])
    z = lambda n: torch.zeros(1, n, dtype=torch.float64)  # noqa: E731
    jaw_open = z(6)
    jaw_open[0, 3] = 0.3
    rest, _ = flame(z(100), z(50), z(6))
    opened, _ = flame(z(100), z(50), jaw_open)
    moved = (opened - rest)[0].norm(dim=-1).numpy() > 1e-9
    jaw = m["weights"][:, 2] > 0
    assert moved[jaw].all() and not moved[~jaw].any()


def test_gradients_flow_and_refinement_recovers_landmarks(flame):
    torch.manual_seed(0)
    shape = torch.zeros(1, 100, dtype=torch.float64)
    true_exp = 0.5 * torch.randn(1, 50, dtype=torch.float64)
    true_pose = torch.tensor([[0.05, -0.1, 0.02, 0.25, 0.0, 0.0]], dtype=torch.float64)
    true_cam = torch.tensor([[8.0, 0.01, -0.02]], dtype=torch.float64)
    _, lmk = flame(shape, true_exp, true_pose)
    target = project_orthographic(lmk, true_cam).detach()
    exp = torch.zeros(1, 50, dtype=torch.float64, requires_grad=True)
    pose = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    _, lmk0 = flame(shape, exp, pose)
    (project_orthographic(lmk0, true_cam) - target).norm(dim=-1).mean().backward()
    assert exp.grad.abs().sum() > 0 and pose.grad.abs().sum() > 0  # gradients reach every parameter
    start_cam = torch.tensor([[7.0, 0.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        _, l0 = flame(shape, exp, pose)
        start_err = (project_orthographic(l0, start_cam) - target).norm(dim=-1).mean().item()
    e, p, c, err = refine_with_landmarks(flame, shape, exp.detach(), pose.detach(), start_cam, target, steps=400, lr=0.02, reg=0.0)
    assert err < 0.05 * start_err, (err, start_err)
    assert abs(p[0, 3].item() - 0.25) < 0.1  # the jaw opening is found again
    assert abs(c[0, 0].item() - 8.0) < 0.5


def test_deca_checkpoint_loads_strictly_and_encodes(assets, tmp_path):
    enc = load_deca_encoder(assets["deca_checkpoint"])
    codes = enc(torch.rand(2, 3, 224, 224))
    parts = split_codes(codes)
    assert {k: tuple(v.shape) for k, v in parts.items()} == {
        "shape": (2, 100), "tex": (2, 50), "exp": (2, 50), "pose": (2, 6), "cam": (2, 3), "light": (2, 27)}
    bad = build_deca_encoder().state_dict()
    bad["layers.2.weight"] = torch.zeros(200, 1024)
    torch.save({"E_flame": bad}, tmp_path / "bad.tar")
    with pytest.raises(StageError, match="does not match DECA's encoder"):
        load_deca_encoder(str(tmp_path / "bad.tar"))


def test_fit_clip_shapes_validity_and_zero_lag_smoothing(assets):
    models = load_flame_models(assets["flame_model"], assets["deca_checkpoint"], assets["landmark_embedding"], batch_size=4)
    import skimage.data

    img = skimage.data.astronaut()
    box = np.array([150.0, 60.0, 150.0], np.float32)
    frames = [img, img, None, img, img, img]
    boxes = [box, box, None, box, box, box]
    fit = fit_clip(models, frames, boxes)
    assert fit["shape"].shape == (100,) and fit["exp"].shape == (6, 50) and fit["pose"].shape == (6, 6) and fit["cam"].shape == (6, 3)
    assert fit["valid"].tolist() == [True, True, False, True, True, True]
    assert np.all(fit["exp"][2] == 0)  # nothing is invented for the frame without a face
    # smoothing is zero-phase: a step keeps its position (no lag), noise is reduced
    t = np.arange(60, dtype=np.float64)
    step = (t >= 30).astype(float)[:, None]
    noisy = step + 0.05 * np.random.default_rng(0).standard_normal(step.shape)
    sm = smooth(noisy, np.ones(60, bool), window=5)
    assert np.argmax(np.diff(sm[:, 0])) in (28, 29, 30)
    assert np.std(sm[:25] - 0) < np.std(noisy[:25])


def test_flame_stage_in_the_dag_writes_flame_npz(tmp_path, media_dir, flame_run, ray_session):
    import io
    import json
    import tarfile

    from conftest import FLAME_RUN_SETTINGS
    from pipeline.engine.config import load_config
    from pipeline.engine.runner import run_ingest
    from schemas import ManifestRow, RunStats

    run, assets, _ = flame_run  # zh_a with these FLAME files and flame.max_landmark_error_px=1000 (tests/conftest.py)
    (tmp_path / "s.txt").write_text(f"{media_dir / 'zh_a.mp4'}\n")
    sets = [f"flame.{k}={v}" for k, v in assets.items()] + list(FLAME_RUN_SETTINGS)
    # the test-built FLAME has random shape directions: its landmarks never meet a real face closely
    strict = run_ingest(str(tmp_path / "s.txt"), str(tmp_path / "strict"), load_config(None, sets + ["flame.max_landmark_error_px=0.5"]),
                        echo=lambda m: None)
    assert strict.stats.clips == 0 and strict.stats.rejects_by_reason.get("flame_fit_poor", 0) >= 1
    stats = RunStats.model_validate_json((run / "stats.json").read_text())
    manifest = [ManifestRow.model_validate_json(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    assert stats.clips >= 1 and len(manifest) == stats.clips and "flame" not in stats.skipped_stages

    with tarfile.open(next((run / "shards").glob("*.tar"))) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = manifest[0].key
    clip = json.loads(files[f"{key}.json"])
    fit = np.load(io.BytesIO(files[f"{key}.flame.npz"]))
    T = clip["num_frames"]
    assert fit["shape"].shape == (100,) and fit["exp"].shape == (T, 50) and fit["pose"].shape == (T, 6) and fit["cam"].shape == (T, 3)
    assert fit["valid"].shape == (T,) and fit["valid"].mean() > 0.8 and "flame" in clip["stages"] and "flame" not in clip["skipped_stages"]
    assert clip["members"] == ["json", "mp4", "wav", "pose.npz", "flame.npz"]
    assert clip["quality"]["flame_landmark_error_px"] < clip["quality"]["flame_landmark_error_px_deca"]
    # the emotion stage labelled the clip from its FLAME fit; the sources file's human label stays
    est = clip["emotion_estimate"]
    assert est["source"].startswith("flame-probe:") and est["label"] in est["probabilities"] and est["windows"] >= 1
    assert est["confidence"] == max(est["probabilities"].values()) and "emotion" in clip["stages"]
    assert clip["source_metadata"]["emotion"] == "happy"


def test_missing_assets_are_reported_as_skipped(tmp_path, media_dir, ray_session):
    from pipeline.engine.config import load_config
    from pipeline.engine.runner import run_ingest

    (tmp_path / "s.txt").write_text(f"{media_dir / 'zh_a.mp4'}\n")
    sets = ["clips.min_clip_s=1", "speech.enabled=false", "normalize.max_height=240", "clips.min_face_px=0", f"flame.flame_model={tmp_path / 'nope.pkl'}"]
    result = run_ingest(str(tmp_path / "s.txt"), str(tmp_path / "run"), load_config(None, sets), echo=lambda m: None)
    reason = result.stats.skipped_stages["flame"]
    assert "missing assets: flame_model, deca_checkpoint" in reason
    import json
    import tarfile

    with tarfile.open(next((tmp_path / "run" / "shards").glob("*.tar"))) as tar:
        clip = json.loads(tar.extractfile(f"{result.manifest[0].key}.json").read())
    assert clip["skipped_stages"]["flame"] == reason and "flame.npz" not in clip["members"]


@pytest.mark.models
def test_landmark_refinement_moves_flame_towards_dlib_68_points(assets):
    """DECA's estimate refined on dlib's 68 iBUG points of the astronaut: the reprojection error
    drops and is recorded (the test-built FLAME and DECA have production layouts, random values)."""
    import skimage.data

    from stages.flame import ibug68_in_crop

    models = load_flame_models(assets["flame_model"], assets["deca_checkpoint"], assets["landmark_embedding"], batch_size=4, refine_steps=80)
    img = skimage.data.astronaut()
    box = np.array([150.0, 60.0, 150.0], np.float32)
    pts = ibug68_in_crop(img, box)
    assert pts.shape == (68, 2) and np.abs(pts).max() < 1.0  # inside the crop
    # the nose tip (iBUG 30) sits between the eyes (36, 45) horizontally and below them
    assert pts[36, 0] < pts[30, 0] < pts[45, 0] and pts[30, 1] > pts[36, 1]
    fit = fit_clip(models, [img, img, img], [box, box, box])
    before, after = fit["landmark_error_px"]
    assert after < 0.5 * before, (before, after)
    no_refine = load_flame_models(assets["flame_model"], assets["deca_checkpoint"], None, batch_size=4, refine_steps=80)
    assert "landmark_error_px" not in fit_clip(no_refine, [img], [box])  # no landmark embedding: DECA only
