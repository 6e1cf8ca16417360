"""UniVDM initialised from a diffusers ``UNet2DConditionModel`` in Stable Diffusion 1.5's layout (tiny widths,
random weights, written by ``save_pretrained``): tensors land where they belong, mapped layers compute what
the SD layers compute, the reported share is right, and bad sources fail clearly."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from trainers.paha.config import load_paha_config
from trainers.paha.init2d import load_init_2d
from trainers.paha.train import build_model
from trainers.paha.unet import UniVDM
from trainers.schedule import timestep_embedding

CH = (32, 64)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(SD-layout UNet with random weights, its save_pretrained folder): attention at level 0 and the middle only,
    like SD 1.5's last DownBlock2D / first UpBlock2D; 4 heads per level (``attention_head_dim`` is a head count)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=CH, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32).eval()
    with torch.no_grad():  # random biases/norms everywhere, so a misplaced tensor cannot hide behind a default 0 or 1
        for name, p in unet.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    folder = tmp_path_factory.mktemp("sd") / "unet"
    unet.save_pretrained(folder)
    return unet, folder


@pytest.fixture(scope="module")
def net(sd):
    torch.manual_seed(1)
    model = UniVDM(latent_channels=4, channels=CH, attn_levels=(0, 1), heads=4, audio_dim=16).eval()
    result = load_init_2d(model, sd[1])
    return model, result


def test_tensors_land_where_they_belong_and_the_share_is_counted(sd, net):
    unet, _ = sd
    model, result = net
    s = unet.state_dict()
    assert torch.equal(model.down[1].c1.weight, s["down_blocks.1.resnets.0.conv1.weight"])
    assert torch.equal(model.down[1].skip.weight, s["down_blocks.1.resnets.0.conv_shortcut.weight"])
    assert torch.equal(model.up[0].c2.weight, s["up_blocks.0.resnets.0.conv2.weight"])
    assert torch.equal(model.upsample[0].weight, s["up_blocks.0.upsamplers.0.conv.weight"])
    assert torch.equal(model.downsample[0].weight, s["down_blocks.0.downsamplers.0.conv.weight"])
    b = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    qkv = torch.cat([s[f"{b}.to_q.weight"], s[f"{b}.to_k.weight"], s[f"{b}.to_v.weight"]])
    assert torch.equal(model.down_attn[0].spatial.in_proj_weight, qkv)
    assert torch.equal(model.mid_attn.proj_in.weight, s["mid_block.attentions.0.proj_in.weight"].flatten(1))
    assert torch.equal(model.inp.weight[:, :4], s["conv_in.weight"]) and not model.inp.weight[:, 4:].any()
    assert torch.equal(model.out[2].weight, s["conv_out.weight"])
    # new paths: no SD counterpart, they start as identity / zero
    for name, p in model.named_parameters():
        if "temporal.out_proj" in name or "audio.out_proj" in name or name == "frame_type.weight":
            assert not p.any(), name
    assert not model.down_attn[1].proj_out.weight.any()  # SD has no attention at level 1: this block is new

    # the share, counted independently from SD's side: every SD tensor used gives its scalars once
    used = {k for k in s if k not in dict(result.left_out)}
    total = sum(p.numel() for p in model.parameters())
    assert result.total == total and result.initialised == sum(s[k].numel() for k in used)
    assert result.fraction == pytest.approx(result.initialised / total) and result.fraction > 0.6
    why = dict(result.left_out)
    assert "text cross-attention" in why[f"{b.replace('attn1', 'attn2')}.to_k.weight"]
    assert "one ResBlock per level" in why["down_blocks.0.resnets.1.conv1.weight"]
    assert "down_attn.1.spatial.in_proj_weight" in result.new and "down.0.c1.weight" not in result.new


def test_mapped_layers_compute_what_sd_computes(sd, net):
    """Functional checks that fail for a wrong q/k/v order, GEGLU halves, sin/cos order or upsampling order."""
    unet, _ = sd
    model, _ = net
    torch.manual_seed(2)
    with torch.no_grad():
        t = torch.tensor([0, 17, 500, 999])
        temb = model.time(timestep_embedding(t, CH[0]))
        torch.testing.assert_close(temb, unet.time_embedding(unet.time_proj(t)))
        x = torch.randn(4, 32, 8, 8)
        torch.testing.assert_close(model.down[1](x, temb), unet.down_blocks[1].resnets[0](x, temb))
        up_in = torch.randn(4, 128, 4, 4)
        torch.testing.assert_close(model.up[0](up_in, temb), unet.up_blocks[0].resnets[0](up_in, temb))
        h = torch.randn(4, 64, 4, 4)
        torch.testing.assert_close(model.upsample[0](h, (8, 8)), unet.up_blocks[0].upsamplers[0](h))
        z, ref = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
        torch.testing.assert_close(model.inp(torch.cat([z, ref], 1)), unet.conv_in(z))
        torch.testing.assert_close(model.out(x), unet.conv_out(F.silu(unet.conv_norm_out(x))))

        # a single frame (it is its own reference): the video transformer is SD's transformer without the text
        # cross-attention (zeroed on the SD side here; UniVDM's temporal and audio outputs start at zero)
        for ours, theirs, c in ((model.down_attn[0], unet.down_blocks[0].attentions[0], 32),
                                (model.mid_attn, unet.mid_block.attentions[0], 64)):
            cross = theirs.transformer_blocks[0].attn2.to_out[0]
            saved = cross.weight.clone(), cross.bias.clone()
            cross.weight.zero_(), cross.bias.zero_()
            x = torch.randn(1, c, 4, 4)
            expected = theirs(x, encoder_hidden_states=torch.randn(1, 5, 32)).sample
            cross.weight.copy_(saved[0]), cross.bias.copy_(saved[1])
            torch.testing.assert_close(ours(x, 1, 1, torch.randn(1, 5, 16)), expected, atol=1e-5, rtol=1e-4)
        # the whole network still runs on a clip (reference + motion + noisy frames), odd sizes included
        for size in (8, 7):
            z = torch.randn(1, 3, 4, size, size)
            out = model(z, torch.tensor([[0, 0, 400]]), torch.tensor([[0, 1, 2]]), torch.randn(1, 3, 16))
            assert out.shape == z.shape and torch.isfinite(out).all()


def test_other_head_counts_load_with_a_note(sd):
    model = UniVDM(latent_channels=4, channels=CH, attn_levels=(0,), heads=2, audio_dim=16)
    result = load_init_2d(model, sd[1])
    assert "down_attn.0.spatial.in_proj_weight" in result.loaded
    assert any("4 heads" in n and "2" in n for n in result.notes), result.notes


def test_build_model_checks_the_share_and_logs_it(sd, caplog):
    folder = sd[1]
    # tiny preset: pixel-unshuffle latents have 48 channels, so SD's 4-channel conv_in/conv_out do not fit
    cfg = load_paha_config("tiny", [f"model.init_2d={folder}", "train.min_init_fraction=0.99"])
    with pytest.raises(ValueError, match=r"initialised \d+\.\d% .* below train.min_init_fraction=99\.0%.*conv_in\.weight"):
        build_model(cfg)
    cfg = load_paha_config("tiny", [f"model.init_2d={folder}", "train.min_init_fraction=0.5"])
    with caplog.at_level(logging.INFO, logger="trainers.paha.train"):
        model = build_model(cfg)
    assert any("of UniVDM's" in r.getMessage() and "initialised from" in r.getMessage() for r in caplog.records)
    assert torch.equal(model.unet.down[0].c1.weight, sd[0].down_blocks[0].resnets[0].conv1.weight)
    assert 0.5 <= model.init_2d_record["fraction"] < 0.99 and model.init_2d_record["source"].endswith(str(folder.name))


def test_sources_that_are_not_an_sd_unet_fail_clearly(sd, tmp_path):
    model = UniVDM(latent_channels=4, channels=CH, attn_levels=(0,), heads=4, audio_dim=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a diffusers UNet folder"):
        load_init_2d(model, tmp_path / "empty")
    AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                  latent_channels=4, norm_num_groups=32).save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="holds a 'AutoencoderKL', not a UNet2DConditionModel"):
        load_init_2d(model, tmp_path / "vae")
    wider = UniVDM(latent_channels=4, channels=(32, 64, 64), attn_levels=(0,), heads=4, audio_dim=16)
    with pytest.raises(ValueError, match=r"block_out_channels \[32, 64\], model.channels is \[32, 64, 64\]"):
        load_init_2d(wider, sd[1])
    with pytest.raises(FileNotFoundError):
        load_init_2d(model, tmp_path / "missing.pt")


def test_univdm_state_dict_still_loads(tmp_path):
    torch.manual_seed(0)
    other = UniVDM(latent_channels=4, channels=CH, attn_levels=(0,), heads=4, audio_dim=16)
    spatial = {k: v for k, v in other.state_dict().items() if ".temporal." not in k and ".audio." not in k}
    torch.save(spatial, tmp_path / "spatial.pt")
    model = UniVDM(latent_channels=4, channels=CH, attn_levels=(0,), heads=4, audio_dim=16)
    result = load_init_2d(model, tmp_path / "spatial.pt")
    assert result.tensors_loaded == len(spatial) and not result.left_out
    assert result.initialised == sum(v.numel() for v in spatial.values())
    assert torch.equal(model.mid.c1.weight, other.mid.c1.weight)
