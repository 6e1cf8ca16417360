"""Trainer 1 end to end on CPU: configs, in-process and Ray Train training, kill → resume, sampling,
mesh preview, metrics, pretrained backbones by path, the MEAD adapter."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from facial_data import write_facial_shards
from cli_helpers import cnas
from trainer_helpers import assert_same_tensors, kill_and_resume
from trainers.facial import metrics as M
from trainers.facial.config import load_facial_config
from trainers.facial.train import run_training



@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_facial_shards(tmp_path_factory.mktemp("facial") / "shards", clips=16, frames=50)


def _tiny(shards, storage, *extra):
    return load_facial_config("tiny", [f"data.urls={json.dumps(shards)}", "run.use_ray=false",
                                       f"run.storage_path={storage}", *extra])


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    """A tiny model trained in-process: 30 binding + 60 diffusion steps (a few seconds)."""
    storage = tmp_path_factory.mktemp("runs")
    cfg = _tiny(shards, storage, "train.binding_steps=30", "train.diffusion_steps=60", "train.checkpoint_every=30")
    metrics = run_training(cfg)
    return storage / cfg.run.name, metrics


def test_presets_and_config_errors(tmp_path):
    tiny, base = load_facial_config("tiny"), load_facial_config("base")
    assert tiny.model.dim < base.model.dim and base.run.use_gpu and not tiny.run.use_gpu
    y = tmp_path / "c.yaml"
    y.write_text("preset: tiny\ntrain:\n  lr: 0.5\n")
    c = load_facial_config(str(y), ["model.layers=3"])
    assert c.train.lr == 0.5 and c.model.layers == 3 and c.model.dim == tiny.model.dim
    with pytest.raises(ValueError, match="must be even"):
        load_facial_config("tiny", ["data.window_frames=25"])
    y.write_text("preset: huge\n")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_facial_config(str(y))
    with pytest.raises(ValueError, match="data.urls is not set"):
        run_training(load_facial_config("tiny", ["run.use_ray=false", f"run.storage_path={tmp_path}"]))


def test_in_process_training_writes_checkpoints_and_logs(trained):
    run_dir, metrics = trained
    assert metrics["step"] == 90 and metrics["phase"] == 2
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["step_00000030", "step_00000060", "step_00000090"]
    assert {p.name for p in (run_dir / "checkpoints" / "step_00000090").iterdir()} == {"model.pt", "rank_0.pt"}
    rows = [json.loads(line) for line in (run_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    assert any("binding/r1_motion_label" in r for r in rows) and any("diffusion/loss" in r for r in rows)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    diff = [r["diffusion/loss"] for r in rows if "diffusion/loss" in r]
    assert np.mean(diff[-3:]) < np.mean(diff[:3])  # the denoiser learns


def test_kill_then_resume_reaches_the_same_parameters(shards, tmp_path):
    sets = [f"data.urls={json.dumps(shards)}", "run.use_ray=false", "train.binding_steps=100", "train.diffusion_steps=100",
            "train.checkpoint_every=10", "train.log_every=10"]
    a, b, _ = kill_and_resume("facial", sets, tmp_path / "ref", tmp_path / "killed", "step_00000010", "step_00000200")
    assert a["step"] == b["step"] == 200
    for part in ("model", "ema"):
        assert_same_tensors(a[part], b[part], part)
    assert torch.equal(a["opt2"]["state"][0]["exp_avg"], b["opt2"]["state"][0]["exp_avg"])


def test_schedule_accumulation_and_statistics_measured_once(shards, tmp_path):
    import itertools

    from trainers.data import make_loader
    from trainers.facial.train import loader_config
    from trainers.optim import lr_at

    cfg = _tiny(shards, tmp_path, "train.binding_steps=6", "train.diffusion_steps=6", "train.log_every=1",
                "train.checkpoint_every=12", "train.grad_accum=2", "train.warmup_steps=2", "train.lr_schedule=cosine",
                "train.stats_batches=3", "train.val_every=0")
    run_training(cfg)
    run = tmp_path / cfg.run.name
    rows = [json.loads(line) for line in (run / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    # warm-up and cosine per phase, from the step alone (nothing to restore on resume)
    assert lrs == pytest.approx([lr_at(i, 6, cfg.train.lr, cfg.train) for i in range(6)] * 2)
    assert lrs[0] == pytest.approx(cfg.train.lr / 2) and lrs[5] == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio)
    ckpt = run / "checkpoints" / "step_00000012"
    lcfg = loader_config(cfg)
    per_epoch = sum(1 for _ in make_loader(lcfg, epoch=0))
    position = torch.load(ckpt / "rank_0.pt", weights_only=True)["position"]
    assert position["epoch"] * per_epoch + position["batches"] == 12 * 2  # two micro-batches per optimiser step
    # the motion statistics: every valid frame of the first stats_batches batches, saved with the weights
    frames = torch.cat([b["motion"][b["valid"]] for b in itertools.islice(make_loader(lcfg, epoch=0), 3)])
    model = torch.load(ckpt / "model.pt", weights_only=True)["model"]
    assert torch.allclose(model["motion_mean"], frames.mean(0), atol=1e-5)
    assert torch.allclose(model["motion_std"], frames.std(0).clamp(min=1e-3), atol=1e-5)
    assert bool(model["stats_ready"]) and float(model["latent_scale"]) != 1.0


def test_relative_paths_are_resolved_in_the_driver(tmp_path, monkeypatch):
    from trainers.paha.config import load_paha_config
    from trainers.run_config import resolve_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_paha_config("base", ["data.urls=rel/cnas-{000000..000003}.tar", "data.val_urls=[a/val.index.json, s3://b/val.index.json]",
                                    "run.storage_path=runs"]).model_dump(mode="json")
    out = resolve_paths(cfg)
    assert out["data"]["urls"] == f"{tmp_path}/rel/cnas-{{000000..000003}}.tar"  # the brace pattern kept
    assert out["data"]["val_urls"] == [f"{tmp_path}/a/val.index.json", "s3://b/val.index.json"]  # URIs untouched
    assert out["run"]["storage_path"] == f"{tmp_path}/runs"
    # the base preset's model folders (models/sd-vae-ft-mse, models/chinese-hubert-base) are relative too
    assert all(out["model"][k].startswith(str(tmp_path)) for k in ("vae", "audio_backbone") if cfg["model"][k])
    assert cfg["run"]["storage_path"] == "runs"  # the caller's dict is not changed


def test_ray_train_two_workers_checkpoint_and_resume(shards, tmp_path, ray_session, monkeypatch):
    # the quick start's way: shards and storage as paths relative to where the command runs; the
    # Ray Train workers have working directories of their own, so the driver resolves them
    monkeypatch.chdir(tmp_path)
    relative = [os.path.relpath(s, tmp_path) for s in shards]
    assert not any(os.path.isabs(s) for s in relative)
    cfg = load_facial_config("tiny", [f"data.urls={json.dumps(relative)}", "run.storage_path=.", "run.num_workers=2",
                                      "train.binding_steps=4", "train.diffusion_steps=4", "train.checkpoint_every=4",
                                      "train.log_every=4"])
    result = run_training(cfg)
    assert result.error is None and result.metrics["step"] == 8
    run_dir = tmp_path / "facial-tiny"
    for step in ("step_00000004", "step_00000008"):
        assert {p.name for p in (run_dir / step).iterdir()} == {"model.pt", "rank_0.pt", "rank_1.pt"}
    assert torch.load(run_dir / "step_00000008" / "model.pt", weights_only=False)["world_size"] == 2
    # the same command with more steps continues from step 8
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"diffusion_steps": 8})})
    result = run_training(more)
    assert result.error is None and result.metrics["step"] == 12 and (run_dir / "step_00000012" / "model.pt").exists()
    # uploaded in the background (Ray's async checkpoint upload), fetched once per node on resume; both timed
    rows = [json.loads(line) for line in (run_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == 8 and resumed[0]["restore_s"] > 0
    assert [r["step"] for r in rows if "checkpoint/save_s" in r] == [4, 8, 12]


def test_a_worker_fetches_only_its_own_files_of_a_checkpoint(tmp_path):
    import types

    import pyarrow.fs as pafs

    from trainers.session import _exists, _fetch, _wait_for

    stored = tmp_path / "storage" / "step_00000004"
    stored.mkdir(parents=True)
    for name in ("model.pt", "rank_0.pt", "rank_1.pt"):
        (stored / name).write_bytes(name.encode())
    ckpt = types.SimpleNamespace(path=str(stored), filesystem=pafs.LocalFileSystem())
    node = tmp_path / "node"
    _fetch(ckpt, "model.pt", node)
    _fetch(ckpt, "rank_1.pt", node)
    assert sorted(p.name for p in node.iterdir()) == ["model.pt", "rank_1.pt"]  # rank 0's file stays where it is
    assert (node / "rank_1.pt").read_bytes() == b"rank_1.pt" and _exists(ckpt, "rank_0.pt") and not _exists(ckpt, "rank_7.pt")
    _wait_for(node / "model.pt", 1)  # there: no wait
    with pytest.raises(TimeoutError, match="did not fetch the checkpoint within 0 s"):
        _wait_for(node / "absent.pt", 0.1, poll_s=0.02)


def test_generate_cli_sequence_preview_and_errors(trained, tmp_path):
    from model_builders import build_flame_files

    run_dir, _ = trained
    assets = build_flame_files(str(tmp_path / "assets"))
    wav = tmp_path / "a.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=180:duration=3.2", "-ar", "16000",
                    str(wav)], check=True)
    # `cnas generate facial` in process (tests/cli_helpers.py): the files and the status are checked, not a terminal
    base = ["generate", "facial", "--checkpoint", run_dir, "--audio", wav, "--steps", "5"]
    out = tmp_path / "seq.npz"
    r = cnas(*base, "--emotion-label", "angry", "--intensity", "2", "--out", out, "--flame-model", assets["flame_model"])
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(out) as z:
        assert z["exp"].shape == (80, 50) and z["pose"].shape == (80, 6) and np.all(z["pose"][:, :3] == 0)
        assert np.isfinite(z["exp"]).all()
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,nb_frames", "-of", "json",
                            str(out.with_suffix(".mp4"))], capture_output=True, text=True, check=True)
    streams = {s["codec_type"]: s for s in json.loads(probe.stdout)["streams"]}
    assert streams["video"]["nb_frames"] == "80" and "audio" in streams
    for emotion in (["--emotion-text", "a very sad face"], ["--emotion-audio", str(wav)]):
        r = cnas(*base, *emotion, "--out", tmp_path / "x.npz")
        assert r.returncode == 0, r.stderr[-2000:]
    r = cnas(*base, "--emotion-label", "bored", "--out", tmp_path / "y.npz")
    assert r.returncode == 1 and "unknown emotion label 'bored'" in r.stderr
    r = cnas(*base[:2], "--checkpoint", tmp_path, "--audio", wav, "--emotion-label", "sad", "--out", "z.npz")
    assert r.returncode == 1 and "no checkpoint" in r.stderr


def test_long_audio_is_generated_in_cross_faded_windows(trained):
    from trainers.facial.generate import emotion_from_args, generate_motion, load_trained

    model, cfg, _ = load_trained(trained[0])
    emo = emotion_from_args(model, label="happy")
    wave = torch.randn(16000 * 3)  # 75 frames; the window is 24
    a = generate_motion(model, wave, emo, cfg.data.window_frames, seed=1, steps=4)
    b = generate_motion(model, wave, emo, cfg.data.window_frames, seed=1, steps=4)
    assert a.shape == (75, 53) and np.array_equal(a, b)  # deterministic for a seed
    jumps = np.abs(np.diff(a, axis=0)).max(axis=1)
    assert jumps.max() < 10 * np.median(jumps) + 1e-6  # no seam much larger than the frame-to-frame motion


def test_eval_reports_metrics_with_and_without_flame(trained, shards, tmp_path):
    import pickle

    from model_builders import build_flame_files
    from trainers.facial.evaluate import FacialEvalOptions, evaluate

    run_dir, _ = trained
    plain = evaluate(run_dir, shards, FacialEvalOptions(max_clips=3, samples=2, steps=4))
    assert plain["clips"] == 3 and plain["lve"] is None and plain["fdd"] is None and "notes" in plain
    assert plain["diversity"] > 0 and plain["param_mse"] > 0 and plain["device"] == "cpu"
    # scored by an independent network only: without --probe there is no emotion similarity, and a note says why
    assert plain["emotion_similarity"] is None and any("--probe" in n for n in plain["notes"])
    assert plain["conditioning"]["audio"]["chance"] == 0.0 and "emotion" not in plain["conditioning"]
    assets = build_flame_files(str(tmp_path / "assets"))
    masks = tmp_path / "FLAME_masks.pkl"
    masks.write_bytes(pickle.dumps({"lips": np.arange(10), "forehead": np.arange(20, 30), "eye_region": np.arange(30, 40)}))
    full = evaluate(run_dir, shards, FacialEvalOptions(max_clips=2, samples=2, steps=4, flame_model=assets["flame_model"],
                                                       flame_masks=str(masks)))
    assert full["lve"] > 0 and np.isfinite(full["fdd"]) and full["diversity_space"] == "vertices"
    with pytest.raises(ValueError, match="both --flame-model and --flame-masks"):
        FacialEvalOptions(flame_model=assets["flame_model"])  # before any checkpoint is loaded


def test_metrics_known_answers():
    ref = np.zeros((4, 6, 3))
    pred = ref.copy()
    pred[:, 2, 0] = [1, 2, 3, 4]  # lip vertex 2 off by t+1 along x
    pred[:, 5, 1] = 10  # not a lip vertex
    # CodeTalker's cal_metric.py: max over lip vertices of the *squared* distance, mean over frames
    assert M.lip_vertex_error(pred, ref, np.array([1, 2])) == pytest.approx((1 + 4 + 9 + 16) / 4)
    template = np.zeros((6, 3))
    moving = ref.copy()
    moving[:, 0, 2] = [0, 2, 0, 2]  # squared displacement 0, 4, 0, 4: std over time 2
    # reference minus prediction, signed: the prediction moving more than a still reference is negative
    assert M.upper_face_dynamics_deviation(moving, ref, template, np.array([0])) == pytest.approx(-2.0)
    assert M.upper_face_dynamics_deviation(ref, moving, template, np.array([0, 1])) == pytest.approx((2.0 + 0.0) / 2)
    assert M.upper_face_dynamics_deviation(ref, ref, template, np.array([0, 1])) == 0
    e = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert M.emotion_similarity(e, e) == pytest.approx(1.0) and M.emotion_similarity(e, -e) == pytest.approx(-1.0)
    s = np.zeros((3, 5, 2))
    assert M.diversity(s) == 0
    s[1] += [3, 4]
    assert M.diversity(s) == pytest.approx((5 + 0 + 5) / 3)
    with pytest.raises(ValueError, match="two samples"):
        M.diversity(s[:1])


def test_renderer_draws_front_faces_only():
    from trainers.facial.render import render_mesh

    verts = np.array([[-1, -1, 0], [1, -1, 0], [0, 1, 0]], float)
    front = render_mesh(verts, np.array([[0, 1, 2]]), size=64)
    back = render_mesh(verts, np.array([[0, 2, 1]]), size=64)
    assert front[32, 32].mean() > 150 and front[2, 2].mean() == 30  # the triangle covers the centre only
    assert (back == 30).all()


def test_pretrained_backbones_by_path(shards, tmp_path):
    from model_builders import build_tiny_text_encoder, build_tiny_wav2vec2_ctc
    from trainers.facial.generate import emotion_from_args, load_trained

    w2v, bert = build_tiny_wav2vec2_ctc(str(tmp_path / "w2v")), build_tiny_text_encoder(str(tmp_path / "bert"))
    cfg = _tiny(shards, tmp_path / "runs", f"model.audio_backbone={w2v}", f"model.text_backbone={bert}",
                "train.binding_steps=3", "train.diffusion_steps=3", "train.checkpoint_every=3")
    assert run_training(cfg)["step"] == 6
    state = torch.load(tmp_path / "runs" / "facial-tiny" / "checkpoints" / "step_00000006" / "model.pt", weights_only=False)
    assert not any(k.startswith(("frontend.model.", "binding.text.model.")) for k in state["model"])  # frozen: not saved
    assert any(k.startswith("binding.text.proj.") for k in state["model"])
    model, _, _ = load_trained(tmp_path / "runs" / "facial-tiny")
    assert emotion_from_args(model, text="a very angry face").shape == (1, cfg.model.emotion_dim)
    frozen = [p for n, p in model.named_parameters() if n.startswith("frontend.model.")]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_trains_on_shards_of_a_real_ingest_run(view_shards, tmp_path):
    cfg = load_facial_config("tiny", [f"data.urls={json.dumps(view_shards)}", "run.use_ray=false",
                                      f"run.storage_path={tmp_path}", "train.binding_steps=2", "train.diffusion_steps=2",
                                      "data.batch_size=2"])
    assert run_training(cfg)["step"] == 4


def test_mead_adapter(tmp_path):
    from pipeline.corpora.mead import parse_mead_path, write_mead_sources
    from pipeline.engine.sources import read_sources

    for rel in ("M003/video/front/angry/level_3/001.mp4", "M003/video/front/neutral/level_1/002.mp4",
                "W009/video/left_30/happy/level_2/010.mp4", "M003/audio/angry/level_3/001.m4a", "misc/clip.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert parse_mead_path(Path("x/M003/video/front/bored/level_1/001.mp4")) is None
    out = tmp_path / "mead.csv"
    assert write_mead_sources(tmp_path, out) == (2, 1)  # misc/clip.mp4 is not MEAD's layout
    items = {i.video_id: i for i in read_sources(out)}
    angry = items["mead_M003_front_angry_l3_001"]
    assert angry.metadata["emotion"] == "angry" and angry.metadata["emotion_intensity"] == "3" and angry.metadata["speaker"] == "M003"
    assert write_mead_sources(tmp_path, out, views=())[0] == 3
    with pytest.raises(ValueError, match="no MEAD videos"):
        write_mead_sources(tmp_path / "M003" / "audio", out)
    r = cnas("adapt", "mead", tmp_path, "--out", out, "--view", "all")
    assert r.returncode == 0 and "3 MEAD clips" in r.stdout, r.stderr


def test_unknown_emotion_label_is_an_error_not_neutral():
    from schemas import ClipRecord
    from trainers.data import emotion_of

    base = dict(key="v-0000", clip_uid="u", video_id="v", index=0, source_uri="x", start_s=0.0, end_s=1.0, source_duration_s=2.0,
                fps=25.0, num_frames=25, sample_rate_hz=16000, num_audio_samples=16000, width=64, height=64, members=["json"])
    assert emotion_of(ClipRecord(**base, source_metadata={"emotion": "Happy"}), "neutral")[0] == "happy"
    assert emotion_of(ClipRecord(**base), "neutral")[0] == "neutral"
    with pytest.raises(ValueError, match="emotion 'hapy' is not one of"):
        emotion_of(ClipRecord(**base, source_metadata={"emotion": "hapy"}), "neutral")


def test_a_pseudo_label_trains_above_its_confidence_and_a_human_label_wins():
    from schemas import ClipRecord, EmotionEstimate
    from trainers.data import emotion_of

    base = dict(key="v-0000", clip_uid="u", video_id="v", index=0, source_uri="x", start_s=0.0, end_s=1.0, source_duration_s=2.0,
                fps=25.0, num_frames=25, sample_rate_hz=16000, num_audio_samples=16000, width=64, height=64, members=["json"])
    est = EmotionEstimate(label="sad", confidence=0.7, probabilities={"sad": 0.7, "neutral": 0.3}, windows=3, source="flame-probe:ab")
    assert emotion_of(ClipRecord(**base, emotion_estimate=est), "neutral", 0.6) == ("sad", 1, "a slightly sad face", "estimate")
    assert emotion_of(ClipRecord(**base, emotion_estimate=est), "neutral", 0.8)[::3] == ("neutral", "default")
    labelled = ClipRecord(**base, emotion_estimate=est, source_metadata={"emotion": "happy", "emotion_intensity": 3})
    assert emotion_of(labelled, "neutral", 0.0)[::3] == ("happy", "metadata")
    # the template text in Chinese for a Chinese clip (auto) or when asked
    assert emotion_of(ClipRecord(**base, emotion_estimate=est, language="zh"), "neutral", 0.6, "auto")[2] == "略显悲伤的表情"
    assert emotion_of(labelled, "neutral", 0.6, "zh")[2] == "非常开心的表情"
    assert emotion_of(labelled, "neutral", 0.6, "auto")[2] == "a very happy face"
    with pytest.raises(ValueError, match="emotion 'glad' is not one of"):
        EmotionEstimate(label="glad", confidence=0.5, windows=1, source="x")


def test_the_text_encoder_reads_chinese_per_character():
    from trainers.facial.binding import TextEncoder

    enc = TextEncoder(dim=8, buckets=1 << 20)
    ids, offsets = enc.tokens(["明显开心的表情", "a clearly happy face"])
    assert offsets.tolist() == [0, 7] and len(ids) == 11
    same, _ = enc.tokens(["明显悲伤的表情"])
    assert len(set(same.tolist()) & set(ids[:7].tolist())) == 5  # 明 显 的 表 情 shared, 悲 伤 ≠ 开 心
