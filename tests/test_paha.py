"""Trainer 2 (PAHA) on CPU: PAR, PCE, SG/DG guidance, UniVDM, training runs (kill → resume, Ray
Train with 2 workers), generation, metrics, a VAE by path."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from paha_data import write_paha_shards
from cli_helpers import cnas
from trainer_helpers import assert_same_tensors, kill_and_resume
from trainers.data import LoaderConfig, make_loader
from trainers.paha import metrics as M
from trainers.paha.config import load_paha_config
from trainers.paha.model import ClassifierModel, VideoModel
from trainers.paha.parts import audio_region_mask, downsample_masks, mismatched_audio, par_loss, par_weights, region_boxes
from trainers.paha.sampling import sample_window
from trainers.paha.train import run_training
from trainers.paha.unet import UniVDM


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("paha")
    return {"train": write_paha_shards(d / "train", clips=32, frames=24, per_shard=8),
            "test": write_paha_shards(d / "test", clips=16, frames=24, seed=5)}


def _batches(urls, window=12, batch=8, epochs=1, **kw):
    lc = LoaderConfig(urls=urls, view="paha", window_frames=window, image_size=32, batch_size=batch, **kw)
    return [b for e in range(epochs) for b in make_loader(lc, epoch=e)]


def _score(pce: ClassifierModel, z: torch.Tensor, raw: torch.Tensor, boxes: dict, t: int = 0) -> float:
    """Mean log-probability of 'in sync' over regions, at timestep t."""
    tt = torch.full((len(z),), t, dtype=torch.long)
    with torch.no_grad():
        return float(np.mean([torch.nn.functional.logsigmoid(pce.pce(r, z, b, tt, raw)).mean().item() for r, b in boxes.items()]))


@pytest.fixture(scope="module")
def trained_pce(shards):
    """PCE on the tiny config, 150 steps on synthetic sync data (~10 s)."""
    cfg = load_paha_config("tiny")
    torch.manual_seed(0)
    model = ClassifierModel(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = _batches(shards["train"], epochs=3, shuffle_buffer=32)
    for step in range(150):
        loss, _ = model.loss(batches[step % len(batches)], min_shift=3, buckets=4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_univdm(shards):
    """UniVDM on the tiny config, 150 steps over the synthetic clips (a denoiser that reads x_t)."""
    torch.manual_seed(0)
    model = VideoModel(load_paha_config("tiny").model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batches = _batches(shards["train"], window=12, batch=4, epochs=2, shuffle_buffer=32)
    for step in range(150):
        loss, _ = model.loss(batches[step % len(batches)], use_motion=step % 2 == 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_par_weights_follow_the_formula_and_change_the_loss_only_inside_masks():
    masks = torch.zeros(1, 2, 5, 8, 8)
    masks[0, :, 1, 0:2, 0:2] = 1  # mouth: latent pixel (0, 0) fully
    masks[0, :, 2, 2:4, 2:3] = 1  # left hand: half of latent pixel (1, 1)
    masks[0, 1, 3, 4:6, 4:6] = 1  # right hand in frame 1 only, but seen with confidence 0
    conf = torch.tensor([[[0.9, 0.8, 0.5, 0.0, 1.0], [0.9, 0.4, 1.0, 0.0, 1.0]]])
    lambdas = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0])
    m = downsample_masks(masks, 4, 4)
    w = par_weights(m, conf, lambdas)
    assert w.shape == (1, 2, 1, 4, 4)
    assert w[0, 0, 0, 0, 0] == pytest.approx(1 + 2.0 * 0.8) and w[0, 1, 0, 0, 0] == pytest.approx(1 + 2.0 * 0.4)
    assert w[0, 0, 0, 1, 1] == pytest.approx(1 + 2.0 * 0.5 * 0.5) and w[0, 1, 0, 1, 1] == pytest.approx(1 + 2.0 * 1.0 * 0.5)
    assert w[0, 1, 0, 2, 2] == 1.0  # confidence 0: no extra weight
    assert int((w != 1).sum()) == 4  # everything else keeps weight 1
    target = torch.zeros(1, 2, 3, 4, 4)
    outside = target.clone()
    outside[..., 3, 3] = 1.0
    assert par_loss(outside, target, w) == par_loss(outside, target, None)  # error outside the parts: unchanged
    inside = target.clone()
    inside[:, 0, :, 0, 0] = 1.0
    assert par_loss(inside, target, w).item() == pytest.approx(par_loss(inside, target, None).item() * 2.6)


def test_par_hand_weight_comes_from_pose_visibility_not_handedness():
    """PAR's hand confidence is the Pose model's visibility of that hand's landmarks; the hand
    landmarker's handedness score (a left/right label) changes nothing."""
    from geometry.landmarks import POSE_HAND_LANDMARKS, part_arrays

    T, nan = 4, np.nan
    body = np.random.default_rng(0).uniform(0.2, 0.8, (T, 33, 3)).astype(np.float32)
    body[3] = nan  # frame 3: no body pose
    vis = np.linspace(0.05, 0.95, 33, dtype=np.float32)[None].repeat(T, 0)
    vis[1, list(POSE_HAND_LANDMARKS["left_hand"])] = [0.9, 0.8, 0.7, 0.6]
    hand = np.random.default_rng(1).uniform(0.3, 0.5, (T, 21, 3)).astype(np.float32)
    arrays = {"body": body, "body_visibility": vis, "face": np.full((T, 478, 3), nan, np.float32),
              "left_hand": hand.copy(), "right_hand": np.full((T, 21, 3), nan, np.float32)}
    arrays["left_hand"][2] = nan  # frame 2: the hand landmarker found no left hand
    scores = {}
    for handedness in (0.99, 0.2):
        arrays.update(left_hand_score=np.full(T, handedness, np.float32), right_hand_score=np.zeros(T, np.float32))
        out = part_arrays(arrays, np.zeros(T, np.float32), np.full((T, 4), nan, np.float32), 640, 360)
        scores[handedness] = out["part_confidences"][:, 2]
    np.testing.assert_array_equal(scores[0.99], scores[0.2])
    expected = vis[0, [15, 17, 19, 21]].mean()
    assert scores[0.99][0] == pytest.approx(expected) and scores[0.99][1] == pytest.approx(0.75)
    assert scores[0.99][2] == 0 and scores[0.99][3] == 0  # no hand; a hand but no body pose
    # a hand without a body pose is there (its box serves occlusion and PCE), with no PAR weight
    assert out["part_present"][:, 2].tolist() == [True, True, False, True]
    assert not np.isnan(out["part_boxes"][3, 2]).any() and np.isnan(out["part_boxes"][2, 2]).all()
    assert not out["part_present"][:, 3].any()  # no right hand anywhere


def test_region_boxes_and_negatives():
    masks = torch.zeros(2, 3, 5, 8, 8)
    masks[0, 1, 1, 2:4, 3:6] = 1
    boxes, seen = region_boxes(masks, "mouth")
    assert seen.tolist() == [True, False]
    assert boxes[0].tolist() == [3, 2, 6, 4] and boxes[1].tolist() == [0, 0, 8, 8]
    audio = torch.arange(2 * 6 * 1, dtype=torch.float32).view(2, 6, 1)
    neg = mismatched_audio(audio, torch.Generator().manual_seed(0), min_shift=2)
    assert not torch.equal(neg[0], audio[0]) and not torch.equal(neg[1], audio[1])


def test_pce_learns_sync_versus_shifted_audio_at_low_noise(trained_pce, shards):
    torch.manual_seed(1)
    ok = n = 0
    for b in _batches(shards["test"], random_window=False):
        z = trained_pce.latent.encode(b["video"].flatten(0, 1)).unflatten(0, b["video"].shape[:2])
        audio = trained_pce.raw_audio(b["audio"], z.shape[1])
        t = torch.randint(0, 10, (len(z),))  # the lowest 10 % of noise levels
        z_t = trained_pce.schedule.q_sample(z, t, torch.randn_like(z))
        boxes, _ = region_boxes(downsample_masks(b["part_masks"], *z.shape[-2:]), "mouth")
        with torch.no_grad():
            pos = trained_pce.pce("mouth", z_t, boxes, t, audio)
            neg = trained_pce.pce("mouth", z_t, boxes, t, mismatched_audio(audio, min_shift=3))
        ok += int((pos > 0).sum() + (neg <= 0).sum())
        n += 2 * len(z)
    assert ok / n > 0.8, ok / n  # chance is 0.5; measured 0.97 after 150 steps


def test_univdm_overfits_one_clip_and_sampling_reproduces_it(shards):
    b = next(iter(make_loader(LoaderConfig(urls=shards["test"], view="paha", window_frames=6, image_size=32, batch_size=1,
                                           random_window=False))))
    b = {k: (v.expand(4, *v.shape[1:]) if torch.is_tensor(v) else v) for k, v in b.items()}
    torch.manual_seed(0)
    model = VideoModel(load_paha_config("tiny").model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(200):
        loss, _ = model.loss(b, use_motion=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < first / 10, (first, last)  # measured 0.24 -> 0.005
    model.eval()
    z = model.encode_frames(b["video"][:1])
    zr = model.encode_frames(b["reference"][:1, None])[:, 0]
    out = sample_window(model, zr, model.audio_features(b["audio"][:1], 6), 6, steps=25, audio_scale=1.0,
                        audio_mask=model.audio_mask(b["part_boxes"][:1], 32))
    with pytest.raises(ValueError, match="needs its audio_mask"):
        sample_window(model, zr, model.audio_features(b["audio"][:1], 6), 6, steps=2)
    copy_ref = ((zr[:, None].expand_as(z) - z).norm() / z.norm()).item()
    rel = ((out - z).norm() / z.norm()).item()
    assert rel < 0.25 and rel < copy_ref / 2, (rel, copy_ref)  # measured 0.04 vs 0.54 for copying the reference


def test_sg_and_dg_raise_the_classifier_score(trained_pce, trained_univdm, shards):
    model = trained_univdm
    torch.manual_seed(0)
    b = _batches(shards["test"], window=12, batch=2, random_window=False)[0]
    z = model.encode_frames(b["video"])
    zr = model.encode_frames(b["reference"][:, None])[:, 0]
    audio = model.audio_features(b["audio"], 12)
    raw = trained_pce.raw_audio(b["audio"], 12)
    masks = downsample_masks(b["part_masks"], *z.shape[-2:])
    boxes = {r: region_boxes(masks, r)[0] for r in ("mouth", "hands")}
    noise = torch.randn_like(z)
    mask = model.audio_mask(b["part_boxes"], 32)
    out = {g: sample_window(model, zr, audio, 12, steps=10, audio_scale=1.0, guidance=g, pce=trained_pce, raw_audio=raw,
                            boxes=boxes, guidance_scale=0.2, noise=noise, audio_mask=mask) for g in ("none", "sg", "dg")}
    score = {g: _score(trained_pce, x, raw, boxes) for g, x in out.items()}
    assert score["sg"] > score["none"] and score["dg"] > score["none"], score
    assert not torch.equal(out["sg"], out["dg"])
    with pytest.raises(ValueError, match="needs the PCE classifiers"):
        sample_window(model, zr, audio, 12, steps=2, guidance="sg", audio_mask=mask)


def test_unet_shapes_motion_frames_and_2d_init():
    torch.manual_seed(0)
    net = UniVDM(latent_channels=12, channels=(16, 32), attn_levels=(0, 1), heads=2, audio_dim=8)
    z = torch.randn(2, 5, 12, 8, 8)
    types = torch.tensor([[0, 1, 2, 2, 2]] * 2)
    t = torch.tensor([[0, 0, 50, 50, 50]] * 2)
    out = net(z, t, types, torch.randn(2, 5, 8))
    assert out.shape == z.shape
    other = UniVDM(latent_channels=12, channels=(16, 32), attn_levels=(0, 1), heads=2, audio_dim=8)
    spatial = {k: v for k, v in other.state_dict().items() if ".temporal." not in k and ".audio." not in k}
    loaded, skipped = net.init_from_2d(spatial)
    assert len(loaded) == len(spatial) and not skipped
    assert torch.equal(net.inp.weight, other.inp.weight)
    assert all(torch.count_nonzero(p) == 0 for n, p in net.named_parameters() if "temporal.out_proj" in n)


def test_audio_region_mask_places_the_audio_and_confines_its_effect():
    nan = float("nan")
    boxes = torch.full((2, 3, 5, 4), nan)  # 2 samples, a 3-frame window, PARTS order
    boxes[0, :, 0] = torch.tensor([16.0, 10, 48, 42])  # face
    boxes[0, :, 1] = torch.tensor([24.0, 30, 40, 36])  # mouth, opening to y 38 in frame 1
    boxes[0, 1, 1, 3] = 38.0
    boxes[0, 2, 2] = torch.tensor([2.0, 50, 10, 58])  # a left hand in the last frame only
    m = audio_region_mask(boxes, 64, "mouth", 0.05)  # lower face + mouth over the window, 3.2 px margin
    ys, xs = m[0, 0].nonzero(as_tuple=True)
    assert m.shape == (2, 1, 64, 64) and set(m.unique().tolist()) == {0.0, 1.0}
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (23, 44, 13, 50)  # face half-way (26) to 42, grown
    assert torch.equal(m[1], torch.ones(1, 64, 64))  # no face found: the audio may act everywhere
    hands = audio_region_mask(boxes, 64, "mouth+hands", 0.0)[0, 0]
    assert hands[54, 5] == 1 and m[0, 0, 54, 5] == 0  # the hand's box, from the frame it was seen in
    assert audio_region_mask(boxes[:, 0], 64, "face", 0.0)[0, 0].sum() == 32 * 32
    assert audio_region_mask(boxes, 64, "frame", 0.05) is None
    with pytest.raises(ValueError, match="unknown audio region"):
        audio_region_mask(boxes, 64, "lips", 0.05)
    # in UniVDM the mask gates the audio cross-attention: a zero mask makes the output deaf to the audio,
    # a mask of ones is the unmasked network
    torch.manual_seed(0)
    net = UniVDM(latent_channels=12, channels=(16, 32), attn_levels=(0, 1), heads=2, audio_dim=8)
    for tr in (net.mid_attn, *net.down_attn, *net.up_attn):  # audio paths start at zero: give them weights
        torch.nn.init.normal_(tr.audio.out_proj.weight, std=0.5)
        torch.nn.init.normal_(tr.proj_out.weight, std=0.5)
    torch.nn.init.normal_(net.out[-1].weight, std=0.5)
    z, t = torch.randn(2, 4, 12, 8, 8), torch.tensor([[0, 50, 50, 50]] * 2)
    types = torch.tensor([[0, 2, 2, 2]] * 2)
    a1, a2 = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    with torch.no_grad():
        assert not torch.allclose(net(z, t, types, a1), net(z, t, types, a2))
        deaf = torch.zeros(2, 1, 32, 32)
        assert torch.allclose(net(z, t, types, a1, audio_mask=deaf), net(z, t, types, a2, audio_mask=deaf))
        assert torch.allclose(net(z, t, types, a1, audio_mask=torch.ones(2, 1, 32, 32)), net(z, t, types, a1))
    cfg = load_paha_config("tiny", ["model.audio_region=mouth"]).model
    assert VideoModel(cfg).audio_mask(boxes, 64).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="audio_region"):
        load_paha_config("tiny", ["model.audio_region=lips"])


def test_group_norm_over_the_video_shares_one_frame_change_with_every_frame():
    from trainers.paha.unet import VideoGroupNorm

    torch.manual_seed(0)
    x = torch.randn(2 * 3, 8, 6, 6)  # 2 samples × 3 frames
    dark = x.clone()
    dark[1, :, 2:4, 2:4] -= 5.0  # sample 0, frame 1: a darkening "mouth"
    outside = torch.ones(6, 6, dtype=torch.bool)
    outside[2:4, 2:4] = False
    per_frame = VideoGroupNorm(4, 8)
    reference = torch.nn.GroupNorm(4, 8)
    per_frame.frames = 3
    assert torch.allclose(per_frame(x), reference(x))  # SD's GroupNorm, whatever the frame count
    moved = (per_frame(dark) - per_frame(x))[:, :, outside].abs().amax(dim=(1, 2))
    assert moved[1] > 0.1 and moved[[0, 2, 3, 4, 5]].max() == 0  # per frame: the rest of that frame moves alone
    video = VideoGroupNorm(4, 8)
    video.over_video, video.frames = True, 3
    expected = torch.nn.functional.group_norm(x.view(2, 3, 8, 6, 6).transpose(1, 2), 4).transpose(1, 2).reshape(6, 8, 6, 6)
    assert torch.allclose(video(x), expected, atol=1e-6)
    shift = video(dark) - video(x)  # over the video: every frame of the sample moves by the same affine map
    mean_shift = shift[:3][:, :, outside].mean(dim=(1, 2))
    assert mean_shift.abs().min() > 0.01 and (mean_shift.max() - mean_shift.min()) < 0.25 * mean_shift.abs().max()
    assert shift[3:].abs().max() == 0  # the other sample's statistics are its own
    assert set(VideoGroupNorm(4, 8).state_dict()) == set(reference.state_dict())  # SD weights load as before


def _sets(urls, *extra):
    return [f"data.urls={json.dumps(urls)}", "run.use_ray=false", *extra]


def test_univdm_kill_then_resume_reaches_the_same_parameters(shards, tmp_path):
    sets = _sets(shards["train"][:2], "train.steps=60", "train.checkpoint_every=5", "train.log_every=5")
    a, b, _ = kill_and_resume("paha", sets, tmp_path / "ref", tmp_path / "killed", "step_00000005", "step_00000060")
    assert a["step"] == b["step"] == 60
    assert_same_tensors(a["model"], b["model"], "model")
    assert_same_tensors(a["ema"], b["ema"], "ema")


def test_a_checkpoint_from_before_the_audio_region_keeps_its_network(shards, tmp_path):
    from trainers.checkpoint import load_checkpoint_file
    from trainers.paha.generate import load_checkpoint

    sets = _sets(shards["train"][:1], f"run.storage_path={tmp_path}", "train.steps=2", "train.checkpoint_every=2",
                 "train.val_every=0", "model.audio_region=frame", "model.group_norm=frame")
    run_training(load_paha_config("tiny", sets))
    ckpt = tmp_path / "paha-tiny" / "checkpoints" / "step_00000002" / "model.pt"
    state = load_checkpoint_file(ckpt)
    for key in ("audio_region", "group_norm"):  # as a checkpoint written before these settings existed
        del state["config"]["model"][key]
    torch.save(state, ckpt)
    model, cfg, _ = load_checkpoint(tmp_path / "paha-tiny", "univdm")
    assert (cfg.model.audio_region, cfg.model.group_norm) == ("frame", "frame") and not model.unet.out[0].over_video
    assert load_paha_config("tiny").model.audio_region != "frame"  # today's default differs: continuing with it is refused
    with pytest.raises(ValueError, match="trained with model.audio_region=frame, model.group_norm=frame"):
        run_training(load_paha_config("tiny", sets[:2] + [f"run.storage_path={tmp_path}", "train.steps=4", "train.val_every=0"]))


def test_ray_train_two_workers_univdm_and_pce(shards, tmp_path, ray_session):
    for target in ("univdm", "pce"):
        cfg = load_paha_config("tiny", [f"data.urls={json.dumps(shards['train'])}", f"run.storage_path={tmp_path}",
                                        "run.num_workers=2", f"run.name=paha-{target}", f"train.target={target}",
                                        "train.steps=4", "train.checkpoint_every=2", "train.log_every=2"])
        result = run_training(cfg)
        assert result.error is None and result.metrics["step"] == 4
        assert {p.name for p in (tmp_path / f"paha-{target}" / "step_00000004").iterdir()} == {"model.pt", "rank_0.pt", "rank_1.pt"}
    assert "pce/mouth_acc" in result.metrics


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    d = tmp_path_factory.mktemp("paharuns")
    for target in ("univdm", "pce"):
        cfg = load_paha_config("tiny", _sets(shards["train"][:2], f"run.storage_path={d}", f"run.name={target}",
                                             f"train.target={target}", "train.steps=6", "train.checkpoint_every=6"))
        run_training(cfg)
    return d


def test_generate_cli_with_each_guidance_and_errors(runs, shards, tmp_path):
    import cv2

    from paha_data import draw_frames, envelope

    frame = draw_frames(envelope(np.random.default_rng(0), 1), 64, np.random.default_rng(0))[0][0]
    ref = tmp_path / "ref.png"
    cv2.imwrite(str(ref), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"mouth": [19, 27, 45, 36], "hands": [8, 46, 58, 58]}))
    wav = tmp_path / "a.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=200:duration=0.6", "-ar", "16000",
                    str(wav)], check=True)
    # `cnas generate paha` in process (tests/cli_helpers.py): the files and the status are checked, not a terminal
    base = ["generate", "paha", "--checkpoint", str(runs / "univdm"), "--ref", str(ref), "--audio", str(wav),
            "--steps", "3"]
    for g in ("none", "sg", "dg"):
        out = tmp_path / f"{g}.mp4"
        r = cnas(*base, "--guidance", g, "--pce-checkpoint", runs / "pce", "--regions", regions, "--out", out)
        assert r.returncode == 0, r.stderr[-2000:]
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,nb_frames,width", "-of", "json",
                                str(out)], capture_output=True, text=True, check=True)
        streams = {s["codec_type"]: s for s in json.loads(probe.stdout)["streams"]}
        assert streams["video"]["nb_frames"] == "15" and streams["video"]["width"] == 32 and "audio" in streams
    r = cnas(*base, "--guidance", "sg", "--out", tmp_path / "x.mp4")
    assert r.returncode == 1 and "needs --pce-checkpoint" in r.stderr
    r = cnas(*base[:3], runs / "pce", *base[4:], "--out", tmp_path / "y.mp4")
    assert r.returncode == 1 and "is a 'pce' checkpoint, expected 'univdm'" in r.stderr


def test_reference_regions_from_mediapipe_on_a_real_photo():
    import skimage.data

    from trainers.paha.generate import reference_regions

    from pipeline.demo.inputs import ASTRONAUT_MOUTH

    regions = reference_regions(skimage.data.astronaut())
    x0, y0, x1, y1 = regions["mouth"]
    cx, cy, hw, hh = ASTRONAUT_MOUTH  # measured once on the face mesh's lip landmarks
    assert abs((x0 + x1) / 2 - cx) < 8 and abs((y0 + y1) / 2 - cy) < 8 and x1 - x0 > hw


def test_eval_reports_each_metric_or_says_what_is_missing(runs, shards, tmp_path):
    from model_builders import build_metric_weights
    from trainers.paha.evaluate import PahaEvalOptions, evaluate

    bare = evaluate(str(runs / "univdm"), shards["test"][:1], PahaEvalOptions(max_clips=2, frames=8, steps=2, hands=False))
    assert bare["clips"] == 2 and bare["psnr"] > 0 and 0 < bare["ssim"] <= 1 and bare["device"] == "cpu"
    assert bare["fid"] is None and bare["fvd"] is None and bare["sync_c"] is None and len(bare["notes"]) == 4
    w = build_metric_weights(str(tmp_path / "w"))  # SyncNet as syncnet_python's syncnet_v2.model state dict
    weights = dict(fid_weights=w["fid"], fvd_weights=w["fvd"], lpips_weights=w["lpips"], syncnet_weights=w["syncnet"])
    # 2 clips × 16 frames: far fewer samples than FID's 2048 / FVD's 400 dimensions
    full = evaluate(str(runs / "univdm"), shards["test"][:1],
                    PahaEvalOptions(max_clips=2, frames=16, steps=2, allow_few_samples=True, **weights))
    assert full["lpips"] >= 0 and full["fid"] >= 0 and full["fvd"] >= 0 and full["device"] == "cpu"
    assert full["fid_samples"] == 32 and full["fvd_samples"] == 2
    assert full["fid_reliable"] is False and full["fvd_reliable"] is False
    flags = [n.split(":")[0] for n in full["notes"]]
    assert {"fid", "fvd", "sync"} <= set(flags) <= {"fid", "fvd", "sync", "hkc"}  # the flags (+ why HKC is undefined)
    # Sync-C/D crops each generated video's own face track: the tiny model's 16-px drawings have no face
    # BlazeFace detects, so no clip is scored (the real clips' boxes are never borrowed) and the note says so
    assert full["sync_clips"] == 0 and full["sync_c"] is None and "sync: 2 clip(s) without a face track" in " ".join(full["notes"])
    # the synthetic drawings have no body MediaPipe's Pose finds, so no hand keypoint confidence:
    # HKC undefined (None, not 0) even where the hand landmarker takes a drawn square for a hand
    assert full["real_hkc"] is None and full["hkc"] is None
    assert ("hkc" in flags) == (full["real_hand_clips"] + full["hand_clips"] > 0)
    assert (full["real_hkv"] is None) or full["real_hand_clips"] > 0
    refused = evaluate(str(runs / "univdm"), shards["test"][:1],
                       PahaEvalOptions(max_clips=1, frames=16, steps=1, hands=False, fid_weights=w["fid"], fvd_weights=w["fvd"]))
    assert refused["fid"] is None and refused["fvd"] is None and refused["fid_reliable"] is None
    assert sum("rank-deficient" in n for n in refused["notes"]) == 2
    with pytest.raises(FileNotFoundError, match="FID: weights file not found"):
        evaluate(str(runs / "univdm"), shards["test"][:1],
                 PahaEvalOptions(max_clips=1, frames=8, steps=1, fid_weights=str(tmp_path / "no.pth"), hands=False))


def test_metric_known_answers():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 10  # mse = 100 / 3
    assert M.psnr(a, a) == float("inf") and M.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / (100 / 3)))
    rng = np.random.default_rng(0)
    v = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    assert M.ssim(v, v) == pytest.approx(1.0)
    f = rng.standard_normal((500, 4))
    assert M.frechet_distance(f, f) == pytest.approx(0, abs=1e-6)
    assert M.frechet_distance(f, f + 2.0) == pytest.approx(16.0, rel=1e-3)  # 4 dims × 2²
    with pytest.raises(ValueError, match="weights not given"):
        M.fid([v], [v], None)


def test_vae_latent_loaded_by_path(shards, tmp_path):
    from diffusers import AutoencoderKL

    from trainers.paha.latent import VaeLatent

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=32).save_pretrained(tmp_path / "vae")
    vae = VaeLatent(str(tmp_path / "vae"))
    frames = torch.rand(3, 3, 32, 32)
    z = vae.encode(frames)
    assert z.shape == (3, 4, 16, 16) and vae.decode(z).shape == (3, 3, 32, 32)
    cfg = load_paha_config("tiny", _sets(shards["train"][:2], f"run.storage_path={tmp_path}", f"model.vae={tmp_path / 'vae'}",
                                         "train.steps=2", "train.checkpoint_every=2"))
    assert run_training(cfg)["step"] == 2
    state = torch.load(tmp_path / "paha-tiny" / "checkpoints" / "step_00000002" / "model.pt", weights_only=False)
    assert not any(k.startswith("latent.vae.") for k in state["model"]) and "unet.inp.weight" in state["model"]
    # a PCE in the same latent space, loaded to guide that video model, shares its VAE and front end
    pce_cfg = load_paha_config("tiny", _sets(shards["train"][:2], f"run.storage_path={tmp_path}", f"model.vae={tmp_path / 'vae'}",
                                             "train.steps=2", "train.checkpoint_every=2", "train.target=pce", "run.name=pce"))
    assert run_training(pce_cfg)["step"] == 2
    from trainers.paha.generate import load_checkpoint

    video, _, _ = load_checkpoint(tmp_path / "paha-tiny", "univdm")
    pce = load_checkpoint(tmp_path / "pce", "pce", share_with=video)[0]
    assert pce.latent is video.latent and pce.frontend is video.frontend
    alone = load_checkpoint(tmp_path / "pce", "pce")[0]
    assert alone.latent is not video.latent
    assert torch.equal(pce.latent.encode(frames), alone.latent.encode(frames))


def test_hkv_is_undefined_not_zero_without_hands():
    from trainers.paha.metrics import hand_keypoints

    blank = np.full((4, 96, 96, 3), 128, np.uint8)
    got = hand_keypoints(blank)
    assert got["hkc"] is None and got["hkv"] is None
