"""Initialising UniVDM's spatial layers from a 2D image U-Net (``model.init_2d``).

Two sources: a diffusers ``UNet2DConditionModel`` folder in Stable Diffusion 1.5's layout (what
``save_pretrained`` writes, e.g. ``stable-diffusion-v1-5/unet``; read from disk, never downloaded), or a ``.pt``
state dict in UniVDM's own key names. Either way the result says how many of UniVDM's scalar parameters were
initialised, and what was left out and why.

SD 1.5 → UniVDM (each tensor only when its shape matches; otherwise it is listed as left out):

=====================================================  ===================================================
SD 1.5                                                 UniVDM
=====================================================  ===================================================
``time_embedding.linear_1`` / ``linear_2``             ``time.0`` (input columns swapped, see below) / ``time.2``
``conv_in`` (c0, 4, 3, 3)                              ``inp[:, :4]`` (frame latent); the reference half is set to 0
``down_blocks.i.resnets.0``                            ``down.i`` (norm1→n1, conv1→c1, time_emb_proj→t, norm2→n2,
                                                       conv2→c2, conv_shortcut→skip)
``down_blocks.i.attentions.0``                         ``down_attn.i`` (when level i has a video transformer)
``down_blocks.i.downsamplers.0.conv``                  ``downsample.i``
``mid_block.resnets.0`` / ``mid_block.attentions.0``   ``mid`` / ``mid_attn``
``up_blocks.j.resnets.0`` / ``attentions.0``           ``up.j`` / ``up_attn.j`` (j counts from the deepest level)
``up_blocks.j.upsamplers.0.conv``                      ``upsample.j`` (nearest ×2, then the conv, as SD)
``conv_norm_out`` / ``conv_out``                       ``out.0`` / ``out.2``
attention ``norm`` / ``proj_in`` / ``proj_out``        ``norm_in`` / ``proj_in`` / ``proj_out`` (1×1 conv → linear)
``transformer_blocks.0.norm1``                         ``norm_s``
``attn1.to_q`` ; ``to_k`` ; ``to_v``                   ``spatial.in_proj_weight`` (stacked q;k;v; SD has no bias)
``attn1.to_out.0``                                     ``spatial.out_proj``
``norm3`` / ``ff.net.0.proj`` / ``ff.net.2``           ``norm_m`` / ``ff.proj`` (GEGLU) / ``ff.out``
=====================================================  ===================================================

Left out on purpose: SD's second (and third) resnet and attention of every level — UniVDM has one ResBlock and
at most one video transformer per level, so an initialised level is SD's first layer, not SD's whole level;
SD's text cross-attention (``attn2``, ``norm2``), whose CLIP keys have no meaning for audio. UniVDM's temporal
and audio attention stay new with zero output projections (AnimateDiff's rule: the network starts as the image
model), and ``frame_type`` is set to zero so every frame starts with SD's time embedding.

Heads: MultiheadAttention packs q/k/v as (3c, c) whatever the head count, so SD's weights load for any
``model.heads``; only the split into heads (and the 1/√d scale) depends on it. SD 1.5's ``attention_head_dim: 8``
means 8 heads; with another count the attention is a different function until fine-tuned (noted in the result).

Timesteps: ``trainers.schedule.timestep_embedding`` is [sin, cos]; SD 1.5's (``flip_sin_to_cos=True``,
``freq_shift=0``) is [cos, sin] with the same frequencies, so ``time.0``'s two input halves are swapped on load
and UniVDM's time MLP computes SD's embedding exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .unet import ResBlock, UniVDM, VideoTransformer

SD_CLASS = "UNet2DConditionModel"
# weight files of a diffusers model folder, in the order they are preferred (full precision first)
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class InitResult:
    """What a 2D initialisation loaded into UniVDM."""

    source: str
    tensors_loaded: int = 0  #: source tensors used
    initialised: int = 0  #: UniVDM scalar parameters set from the source
    total: int = 0  #: all UniVDM scalar parameters
    loaded: dict[str, str] = field(default_factory=dict)  #: UniVDM key → the source key(s) it came from
    left_out: list[tuple[str, str]] = field(default_factory=list)  #: (source key, why it was not loaded)
    new: list[str] = field(default_factory=list)  #: UniVDM parameters that keep their fresh initialisation
    notes: list[str] = field(default_factory=list)  #: what differs from the source model's function

    @property
    def fraction(self) -> float:
        """Share of UniVDM's scalar parameters initialised from the source."""
        return self.initialised / self.total if self.total else 0.0

    def summary(self, limit: int = 5) -> str:
        """One paragraph for the run log (``limit`` examples of each list)."""
        head = (f"{self.fraction:.1%} of UniVDM's {self.total:,} parameters initialised from {self.source} "
                f"({self.tensors_loaded} tensors; {len(self.left_out)} source tensors left out, "
                f"{len(self.new)} UniVDM tensors new)")
        parts = [head]
        reasons: dict[str, list[str]] = {}
        for key, why in self.left_out:
            reasons.setdefault(why, []).append(key)
        if reasons:
            parts.append("left out: " + "; ".join(f"{len(keys)} × {why} (e.g. {keys[0]})"
                                                  for why, keys in list(reasons.items())[:limit]))
        parts += self.notes
        return ". ".join(parts)


def check_fraction(result: InitResult, threshold: float) -> None:
    """Raise ``ValueError`` when less than ``threshold`` (``train.min_init_fraction``) of UniVDM was initialised."""
    if result.fraction >= threshold:
        return
    left = "; ".join(f"{k} ({why})" for k, why in result.left_out[:5]) or "none"
    new = ", ".join(result.new[:5]) or "none"
    raise ValueError(f"model.init_2d initialised {result.fraction:.1%} of UniVDM's parameters from {result.source}, "
                     f"below train.min_init_fraction={threshold:.1%}; first unmatched source tensors: {left}; "
                     f"first UniVDM tensors left new: {new}")


# --- reading a diffusers UNet folder -------------------------------------------------------------------------

def read_unet_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a diffusers ``UNet2DConditionModel`` folder; ``ValueError`` for anything else."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"model.init_2d: {folder} is not a diffusers UNet folder (no config.json)")
    config = json.loads(path.read_text())
    if config.get("_class_name") != SD_CLASS:
        raise ValueError(f"model.init_2d: {folder} holds a {config.get('_class_name')!r}, not a {SD_CLASS}")
    return config


def read_unet_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers model folder (safetensors, sharded safetensors, fp16 variant or .bin)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in _WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
        if name.endswith(".bin"):
            return torch.load(path, map_location="cpu", weights_only=True)
        return load_file(path)
    raise ValueError(f"model.init_2d: no weights in {folder} (looked for {', '.join(_WEIGHT_FILES)})")


# --- the mapping ---------------------------------------------------------------------------------------------

def _lin(target: str, source: str, kind: str = "copy") -> list[tuple[str, tuple[str, ...], str]]:
    """weight and bias of one layer (``kind`` converts the weight)."""
    return [(f"{target}.weight", (f"{source}.weight",), kind), (f"{target}.bias", (f"{source}.bias",), "copy")]


def _resblock(target: str, source: str, block: ResBlock) -> list[tuple[str, tuple[str, ...], str]]:
    pairs = [p for t, s in (("n1", "norm1"), ("c1", "conv1"), ("t", "time_emb_proj"), ("n2", "norm2"), ("c2", "conv2"))
             for p in _lin(f"{target}.{t}", f"{source}.{s}")]
    if isinstance(block.skip, nn.Conv2d):
        pairs += _lin(f"{target}.skip", f"{source}.conv_shortcut")
    return pairs


def _transformer(target: str, source: str) -> list[tuple[str, tuple[str, ...], str]]:
    b = f"{source}.transformer_blocks.0"
    return [*_lin(f"{target}.norm_in", f"{source}.norm"), *_lin(f"{target}.proj_in", f"{source}.proj_in", "linear"),
            *_lin(f"{target}.norm_s", f"{b}.norm1"),
            (f"{target}.spatial.in_proj_weight", tuple(f"{b}.attn1.to_{x}.weight" for x in "qkv"), "qkv"),
            *_lin(f"{target}.spatial.out_proj", f"{b}.attn1.to_out.0"), *_lin(f"{target}.norm_m", f"{b}.norm3"),
            *_lin(f"{target}.ff.proj", f"{b}.ff.net.0.proj"), *_lin(f"{target}.ff.out", f"{b}.ff.net.2"),
            *_lin(f"{target}.proj_out", f"{source}.proj_out", "linear")]


def sd15_pairs(unet: UniVDM) -> list[tuple[str, tuple[str, ...], str]]:
    """(UniVDM key, SD 1.5 source keys, conversion) for every tensor the mapping tries to fill.

    Conversions: ``copy`` (same shape), ``linear`` (a 1×1 conv's (o, i, 1, 1) weight as (o, i)), ``qkv`` (to_q,
    to_k, to_v stacked into MultiheadAttention's in_proj_weight), ``time`` (linear_1 with its sin/cos input halves
    swapped), ``conv_in`` (into the frame-latent half of UniVDM's input conv).
    """
    pairs = [("time.0.weight", ("time_embedding.linear_1.weight",), "time"),
             ("time.0.bias", ("time_embedding.linear_1.bias",), "copy"), *_lin("time.2", "time_embedding.linear_2"),
             *_lin("inp", "conv_in", "conv_in")]
    pairs += _level_pairs(unet.down, unet.down_attn, unet.downsample, ("down", "down_attn", "downsample"), "down_blocks",
                          "downsamplers")
    pairs += _resblock("mid", "mid_block.resnets.0", unet.mid) + _transformer("mid_attn", "mid_block.attentions.0")
    pairs += _level_pairs(unet.up, unet.up_attn, unet.upsample, ("up", "up_attn", "upsample"), "up_blocks", "upsamplers")
    return pairs + _lin("out.0", "conv_norm_out") + _lin("out.2", "conv_out")


def _level_pairs(resblocks: nn.ModuleList, attns: nn.ModuleList, resamplers: nn.ModuleList, names: tuple[str, str, str],
                 sd_blocks: str, sd_resampler: str) -> list[tuple[str, tuple[str, ...], str]]:
    """Pairs of one side of the U-Net: UniVDM level i ← SD ``<sd_blocks>.i`` (its first resnet and attention, and
    its resampling conv) — UniVDM's up list runs from the deepest level, as SD's up_blocks do."""
    res_name, attn_name, resample_name = names
    pairs: list[tuple[str, tuple[str, ...], str]] = []
    for i, (res, attn, resample) in enumerate(zip(resblocks, attns, resamplers)):
        pairs += _resblock(f"{res_name}.{i}", f"{sd_blocks}.{i}.resnets.0", res)
        if isinstance(attn, VideoTransformer):
            pairs += _transformer(f"{attn_name}.{i}", f"{sd_blocks}.{i}.attentions.0")
        if isinstance(resample, nn.Conv2d):
            pairs += _lin(f"{resample_name}.{i}", f"{sd_blocks}.{i}.{sd_resampler}.0.conv")
    return pairs


def _convert(kind: str, src: list[torch.Tensor], own: torch.Tensor, config: Mapping[str, Any]
             ) -> tuple[torch.Tensor | None, int, str]:
    """(UniVDM tensor, scalars initialised, why not) for one pair; the tensor is None when shapes do not allow."""
    s = src[0]
    if kind == "linear" and s.dim() == 4 and s.shape[2:] == (1, 1):
        s = s.flatten(1)  # SD 1.5's 1×1 conv; SD 2's linear projections already have UniVDM's shape
    if kind == "qkv":
        if not all(x.shape == (own.shape[1], own.shape[1]) for x in src) or own.shape[0] != 3 * own.shape[1]:
            return None, 0, f"q/k/v shapes {[tuple(x.shape) for x in src]} do not stack to {tuple(own.shape)}"
        s = torch.cat(src, dim=0)
    if kind == "conv_in":
        half = own.shape[1] // 2
        if s.shape != (own.shape[0], half, *own.shape[2:]):
            return None, 0, f"shape {tuple(s.shape)} does not fit the frame half {(own.shape[0], half, *own.shape[2:])}"
        out = torch.zeros_like(own)
        out[:, :half] = s.to(own.dtype)  # the reference half stays 0: the network starts as SD on the frame alone
        return out, s.numel(), ""
    if s.shape != own.shape:
        return None, 0, f"shape {tuple(s.shape)} ≠ UniVDM's {tuple(own.shape)}"
    if kind == "time" and config.get("flip_sin_to_cos", True):
        half = s.shape[1] // 2
        s = torch.cat([s[:, half:], s[:, :half]], dim=1)  # SD's [cos, sin] input → UniVDM's [sin, cos]
    return s.to(own.dtype), s.numel(), ""


_WHY = [  # why an SD tensor outside the mapping has no place in UniVDM (first match wins)
    (r"transformer_blocks\.\d+\.(attn2|norm2)\.", "text cross-attention: not mapped, UniVDM's audio attention is new"),
    (r"transformer_blocks\.[1-9]", "UniVDM's video transformer has one block"),
    (r"^mid_block\.resnets\.[1-9]", "UniVDM's middle has one ResBlock"),
    (r"\.resnets\.[1-9]", "UniVDM has one ResBlock per level"),
    (r"\.attentions\.[1-9]", "UniVDM has at most one video transformer per level"),
    (r"\.attentions\.0\.", "no video transformer at this UniVDM level (model.attn_levels)"),
]


def _why_unused(key: str) -> str:
    return next((why for pattern, why in _WHY if re.search(pattern, key)), "no counterpart in UniVDM")


def _sd_heads(config: Mapping[str, Any], levels: int) -> list[int]:
    """Heads per level as diffusers reads SD's config (``attention_head_dim`` is a head count in SD 1.5)."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    return list(heads) if isinstance(heads, (list, tuple)) else [heads] * levels


def _notes(unet: UniVDM, config: Mapping[str, Any], loaded: Mapping[str, str]) -> list[str]:
    """How the initialised UniVDM differs from the source's function beyond the layers it lacks."""
    notes = []
    if "time.0.weight" in loaded and config.get("flip_sin_to_cos", True):
        notes.append("time.0: SD's [cos, sin] timestep embedding inputs swapped to UniVDM's [sin, cos]")
    if config.get("freq_shift", 0) != 0:
        notes.append(f"SD's freq_shift={config['freq_shift']} gives other timestep frequencies than UniVDM's (0)")
    heads = _sd_heads(config, len(unet.down))
    for name, module in unet.named_modules():
        if isinstance(module, VideoTransformer) and f"{name}.spatial.in_proj_weight" in loaded:
            level = len(unet.down) - 1 if name == "mid_attn" else int(name.split(".")[1])
            level = level if not name.startswith("up_attn") else len(unet.down) - 1 - level
            if heads[level] != module.heads:
                notes.append(f"{name}: SD splits this attention into {heads[level]} heads, UniVDM into "
                             f"{module.heads} (same packed weights, a different attention until fine-tuned)")
    groups = config.get("norm_num_groups", 32)
    odd = sorted({m.num_groups for n, m in unet.named_modules() if isinstance(m, nn.GroupNorm)
                  and f"{n}.weight" in loaded and m.num_groups != groups})
    if odd:
        notes.append(f"some GroupNorms have {odd} groups where SD has {groups}")
    if "inp.weight" in loaded:
        notes.append("inp: SD's conv_in fills the frame-latent channels; the reference-latent channels start at 0")
    return notes


def map_sd15(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], unet: UniVDM, source: str = "SD"
             ) -> tuple[dict[str, torch.Tensor], InitResult]:
    """Map an SD 1.5-layout ``UNet2DConditionModel`` state dict onto ``unet``'s keys without loading it.

    Returns the UniVDM tensors to load (UniVDM key → tensor in UniVDM's shape and dtype) and the record of what
    was initialised (``frame_type`` is not in it; ``load_init_2d`` zeroes it). Works on meta tensors too, to
    count a full-size mapping without its memory.
    """
    own = dict(unet.named_parameters())
    result = InitResult(source=source, total=sum(p.numel() for p in own.values()))
    updates: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    failed: dict[str, str] = {}
    # a layer's weight and bias load together: a bias without its weight would be no initialisation
    for _, layer in groupby(sd15_pairs(unet), key=lambda pair: pair[0].rsplit(".", 1)[0]):
        layer = [(t, s, kind) for t, s, kind in layer if all(k in state for k in s)]  # absent in SD: stays new
        converted = [(t, s, *_convert(kind, [state[k] for k in s], own[t], config)) for t, s, kind in layer]
        why = next((w for *_, value, _, w in converted if value is None), "")
        if why:
            failed.update((k, why) for _, s, *_ in converted for k in s)
            continue
        for target, sources, value, n, _ in converted:
            updates[target] = value
            used.update(sources)
            result.loaded[target] = " ; ".join(sources)
            result.initialised += n
    result.tensors_loaded = len(used)
    # shape mismatches first: they are what a wrong folder or config shows
    result.left_out = [(k, failed[k]) for k in state if k in failed] + \
        [(k, _why_unused(k)) for k in state if k not in used and k not in failed]
    result.new = [k for k in own if k not in updates]
    result.notes = _notes(unet, config, result.loaded)
    return updates, result


def _univdm_channels(unet: UniVDM) -> list[int]:
    return [res.c1.out_channels for res in unet.down]


@torch.no_grad()
def load_init_2d(unet: UniVDM, path: str | Path) -> InitResult:
    """Initialise ``unet`` from ``path``: a diffusers UNet folder in SD 1.5's layout or a ``.pt`` state dict in
    UniVDM's key names. Raises ``ValueError`` for a folder that is not a ``UNet2DConditionModel`` or whose
    ``block_out_channels`` differ from UniVDM's channels; ``FileNotFoundError`` when nothing is at ``path``."""
    path = Path(path)
    if path.is_dir():
        config = read_unet_config(path)
        if list(config.get("block_out_channels", [])) != _univdm_channels(unet):
            raise ValueError(f"model.init_2d: {path} has block_out_channels {config.get('block_out_channels')}, "
                             f"model.channels is {_univdm_channels(unet)}")
        updates, result = map_sd15(read_unet_weights(path), config, unet, str(path))
        unet.load_state_dict(updates, strict=False)
        # a random frame-type embedding would shift SD's time embedding for every frame: start it at zero
        nn.init.zeros_(unet.frame_type.weight)
        result.notes.append("frame_type embedding set to 0 (every frame starts with SD's time embedding)")
        return result
    if not path.is_file():
        raise FileNotFoundError(f"model.init_2d: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    loaded, skipped = unet.init_from_2d(state)
    own = dict(unet.named_parameters())
    return InitResult(source=str(path), tensors_loaded=len(loaded), initialised=sum(own[k].numel() for k in loaded if k in own),
                      total=sum(p.numel() for p in own.values()), loaded={k: k for k in loaded},
                      left_out=[(k, "no UniVDM tensor with this name and shape") for k in skipped],
                      new=[k for k in own if k not in set(loaded)])
