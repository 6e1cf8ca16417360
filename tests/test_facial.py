"""Trainer 1 building blocks on CPU: emotion binding (InfoNCE) and latent diffusion with CFG."""

from __future__ import annotations

import pytest
import torch

from trainers.facial.binding import (AudioFrameEncoder, LabelEncoder, MotionEncoder, Spectrogram, TextEncoder, binding_loss, info_nce,
                                     recall_at_k)
from trainers.facial.diffusion import Denoiser, MotionAutoencoder, NoiseSchedule, diffusion_loss, latent_valid, sample


def _paired(n: int, g: torch.Generator, maps):
    u = torch.randn(n, 8, generator=g)
    motion = (u @ maps[0]).view(n, 50, 53) + 0.1 * torch.randn(n, 50, 53, generator=g)
    other = u @ maps[1] + 0.1 * torch.randn(n, 32, generator=g)
    return motion, other


@pytest.mark.models
def test_info_nce_learns_a_pairing_well_above_chance():
    g = torch.Generator().manual_seed(0)
    maps = (torch.randn(8, 50 * 53, generator=g) / 8, torch.randn(8, 32, generator=g))
    torch.manual_seed(0)
    motion_enc, other_enc = MotionEncoder(dim=32, hidden=64), torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    opt = torch.optim.Adam([*motion_enc.parameters(), *other_enc.parameters()], lr=2e-3)
    test_m, test_o = _paired(32, g, maps)
    before = recall_at_k(motion_enc(test_m), other_enc(test_o), k=1)
    for _ in range(300):
        m, o = _paired(64, g, maps)
        loss = info_nce(motion_enc(m), other_enc(o), temperature=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = recall_at_k(motion_enc(test_m), other_enc(test_o), k=1)
    assert after > 0.5 and after > before + 0.3, (before, after)  # chance is 1/32


def test_info_nce_leaves_same_label_pairs_out_of_the_negatives():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    label = torch.tensor([2, 2, 0, 1])  # clips 0 and 1 share an emotion label
    same = label[:, None] == label[None, :]
    logits = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).t() / 0.1

    def one_side(lg: torch.Tensor) -> torch.Tensor:  # -log softmax of the positive over the allowed row
        return torch.stack([torch.logsumexp(lg[i][~same[i] | (torch.arange(4) == i)], 0) - lg[i, i] for i in range(4)]).mean()

    want = (one_side(logits) + one_side(logits.t())) / 2
    assert info_nce(a, b, 0.1, same) == pytest.approx(want.item(), rel=1e-5)
    assert info_nce(a, b, 0.1, same) < info_nce(a, b, 0.1)  # a pair fewer to push apart
    # a batch of one emotion (a news corpus before pseudo-labels): the label term has nothing to contrast
    assert info_nce(a, b, 0.1, torch.ones(4, 4, dtype=torch.bool)) == pytest.approx(0.0, abs=1e-6)


def test_encoders_shapes_and_binding_loss():
    B = 4
    motion = torch.randn(B, 50, 53)
    wave = torch.randn(B, 32000)
    m = MotionEncoder(dim=16)(motion)
    spec = Spectrogram()(wave, 50)
    a_enc = AudioFrameEncoder(spec.shape[-1], dim=16)
    assert spec.shape == (B, 50, 321) and a_enc(spec).shape == (B, 16) and a_enc.frame_features(spec).shape == (B, 50, 128)
    t = TextEncoder(dim=16)(["a very angry face", "a slightly happy face", "neutral", ""])
    l = LabelEncoder(dim=16)(torch.tensor([0, 3, 1, 2]), torch.tensor([1, 2, 3, 1]))
    total, terms = binding_loss(m, {"text": t, "label": l, "audio": a_enc(spec)})
    assert m.shape == t.shape == l.shape == (B, 16) and set(terms) == {"text", "label", "audio"} and total.item() > 0
    te = TextEncoder(dim=16)
    assert torch.equal(te(["angry"]), te(["angry"]))


def test_frames_without_a_flame_fit_are_left_out_of_pooling_and_the_diffusion_loss():
    # a latent frame is kept exactly when nothing in its receptive field is a frame without a fit
    torch.manual_seed(0)
    ae = MotionAutoencoder(latent=8)
    motion = torch.randn(1, 40, 53)
    valid = torch.ones(1, 40, dtype=torch.bool)
    valid[:, 17:21] = False
    other = motion.clone()
    other[:, 17:21] = 0.0  # what the shards hold for frames without a fit
    keep = latent_valid(valid, 20)[0]
    changed = (ae.encode(motion) - ae.encode(other)).abs().amax(-1)[0] > 0
    assert torch.equal(keep, ~changed) and keep.sum() == 15, (keep, changed)  # frames 17-20 reach latents 7-11
    # loss: a "denoiser" predicting 0 has loss mean(z0²) over the kept latent frames only
    z0 = torch.ones(2, 6, 4)
    z0[0, 4:] = 100.0  # the frames a mask drops
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    zero = lambda x, *a: torch.zeros_like(x)  # noqa: E731
    assert diffusion_loss(zero, NoiseSchedule(10), z0, None, None, 0, 0, mask).item() == 1.0
    assert diffusion_loss(zero, NoiseSchedule(10), z0, None, None, 0, 0).item() > 100
    assert diffusion_loss(zero, NoiseSchedule(10), z0, None, None, 0, 0, torch.zeros_like(mask)).item() == 0.0
    # motion encoder: pooled only over time steps that see fitted frames alone (receptive field ±6 frames)
    enc = MotionEncoder(dim=8)
    valid = torch.zeros(1, 40, dtype=torch.bool)
    valid[:, :20] = True
    other = motion.clone()
    other[:, 20:] = 0.0
    assert torch.allclose(enc(motion, valid), enc(other, valid), atol=1e-6)
    assert not torch.allclose(enc(motion), enc(other), atol=1e-3)
    assert torch.allclose(enc(motion, torch.zeros_like(valid)), enc(motion))  # nothing fitted: plain mean


def _overfit_setup(steps: int):
    torch.manual_seed(0)
    ae = MotionAutoencoder(latent=16)
    z0 = ae.encode(torch.randn(1, 50, 53)).detach()  # (1, 25, 16)
    z0 = z0 / z0.std()
    audio = torch.randn(1, 50, 128)
    emotion = torch.randn(1, 64)
    schedule = NoiseSchedule(steps=100)
    den = Denoiser(latent=16, dim=64, layers=2)
    opt = torch.optim.Adam(den.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = diffusion_loss(den, schedule, z0.expand(16, -1, -1), audio.expand(16, -1, -1), emotion.expand(16, -1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return den, schedule, z0, audio, emotion, losses


@pytest.mark.models
def test_denoiser_overfits_one_clip_and_sampling_reproduces_it():
    den, schedule, z0, audio, emotion, losses = _overfit_setup(400)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first / 4, (first, last)
    out = sample(den, schedule, z0.shape, audio, emotion, steps=25, audio_scale=1.0, emotion_scale=1.0)
    rel = ((out - z0).norm() / z0.norm()).item()
    assert rel < 0.1, rel  # measured 0.025


def test_cfg_with_scale_zero_is_the_unconditional_output():
    den, schedule, z0, audio, emotion, _ = _overfit_setup(5)
    noise = torch.randn(z0.shape)
    uncond = sample(den, schedule, z0.shape, audio, emotion, steps=10, audio_scale=0.0, emotion_scale=0.0, noise=noise)
    other = sample(den, schedule, z0.shape, torch.randn_like(audio), torch.randn_like(emotion), steps=10,
                   audio_scale=0.0, emotion_scale=0.0, noise=noise)
    assert torch.allclose(uncond, other)  # scale 0 ignores the conditions entirely
    guided = sample(den, schedule, z0.shape, audio, emotion, steps=10, audio_scale=2.0, emotion_scale=0.0, noise=noise)
    assert not torch.allclose(uncond, guided)
