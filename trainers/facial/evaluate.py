"""``cnas eval facial``: score a checkpoint on held-out shards.

For each clip window, ``samples`` sequences are generated from its audio and its emotion label,
then scored against the ground truth with the functions of ``metrics.py``; the ground-truth
sequence is scored by the same code where a metric applies to one sequence (emotion similarity).
Vertex metrics (LVE, FDD) need ``flame_model`` and ``flame_masks``; without them they are
reported as ``null`` with the reason.

    evaluate("runs/facial-tiny", "shards/test-{000000..000003}.tar", FacialEvalOptions(samples=2, steps=10))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from schemas.settings import Settings
from trainers.data import LoaderConfig, make_loader

from . import metrics as M
from .generate import load_trained


class FacialEvalOptions(Settings):
    """How ``evaluate`` samples and scores (the ``cnas eval facial`` options)."""

    max_clips: int = Field(32, description="clips to score, each from its first window")
    samples: int = Field(3, ge=1, description="samples per clip (diversity needs 2+)")
    steps: int = Field(50, description="DDIM steps")
    audio_scale: float = Field(2.0, description="classifier-free guidance scale for audio")
    emotion_scale: float = Field(1.5, description="classifier-free guidance scale for emotion")
    seed: int = 0
    flame_model: str | None = Field(None, description="FLAME generic_model.pkl (for LVE/FDD)")
    flame_masks: str | None = Field(None, description="FLAME_masks.pkl (regions 'lips', 'forehead', 'eye_region')")
    device: str = Field("cpu", description="where to sample: cpu, cuda or cuda:<index>")

    @model_validator(mode="after")
    def _flame_pair(self) -> "FacialEvalOptions":
        # checked here so a half-given pair fails before the checkpoint is loaded
        if bool(self.flame_model) != bool(self.flame_masks):
            raise ValueError("vertex metrics need both --flame-model and --flame-masks")
        return self


def evaluate(checkpoint: str | Path, urls: str | list[str], options: FacialEvalOptions = FacialEvalOptions()) -> dict[str, Any]:
    """Score the checkpoint (a run folder or one ``step_*``) on the clips of ``urls``: a report
    of mean metrics, ``null`` for those that could not be measured (with ``notes``)."""
    samples, device = options.samples, options.device
    model, cfg, step = load_trained(checkpoint, device=device)
    W = cfg.data.window_frames
    flame = None
    flame_model, flame_masks = options.flame_model, options.flame_masks
    if flame_model:  # the options ensure that the masks come with it
        from geometry.flame import load_flame_pickle
        from geometry.flame_layer import FlameLayer

        flame = FlameLayer(load_flame_pickle(flame_model))
        lips = M.load_region_indices(flame_masks, ("lips",))
        upper = M.load_region_indices(flame_masks, ("forehead", "eye_region"))
    lcfg = LoaderConfig(urls=urls, view="facial", window_frames=W, random_window=False, default_emotion=cfg.data.default_emotion,
                        min_valid_frames=cfg.data.min_valid_frames)
    rows: dict[str, list[float]] = {k: [] for k in ("emotion_similarity", "gt_emotion_similarity", "param_mse", "diversity",
                                                    "lve", "fdd", "gt_vs_generated_emotion_similarity")}
    g = torch.Generator().manual_seed(options.seed)
    clips = 0
    for ex in make_loader(lcfg):
        if clips >= options.max_clips:
            break
        clips += 1
        gt = ex["motion"].numpy()
        valid = ex["valid"].numpy()  # frames with a FLAME fit: only those are ground truth
        emo = model.emotion_embedding(label=torch.tensor([ex["emotion_label"]], device=device),
                                      intensity=torch.tensor([ex["emotion_intensity"]], device=device))
        audio = ex["audio"][None].to(device)
        gen = np.stack([model.generate(audio, emo, W, options.steps, options.audio_scale, options.emotion_scale,
                                       torch.randn((1, W // 2, cfg.model.latent_dim), generator=g).to(device))[0].cpu().numpy()
                        for _ in range(samples)])
        gen_emb = model.emotion_embedding(motion=torch.from_numpy(gen).to(device)).cpu().numpy()
        gt_emb = model.emotion_embedding(motion=torch.from_numpy(gt)[None].to(device),
                                         valid=torch.from_numpy(valid)[None].to(device)).cpu().numpy()
        emo = emo.cpu()
        rows["emotion_similarity"].append(M.emotion_similarity(gen_emb, emo.numpy()))
        rows["gt_emotion_similarity"].append(M.emotion_similarity(gt_emb, emo.numpy()))
        rows["gt_vs_generated_emotion_similarity"].append(M.emotion_similarity(gen_emb, gt_emb))
        rows["param_mse"].append(float(((gen[:, valid] - gt[None, valid]) ** 2).mean()))
        if flame is not None:
            from .render import flame_vertices

            gv = np.stack([flame_vertices(flame, s) for s in gen])
            tv = flame_vertices(flame, gt)
            template = flame.v_template.numpy()
            rows["lve"].append(float(np.mean([M.lip_vertex_error(v[valid], tv[valid], lips) for v in gv])))
            rows["fdd"].append(float(np.mean([M.upper_face_dynamics_deviation(v[valid], tv[valid], template, upper) for v in gv])))
            if samples > 1:
                rows["diversity"].append(M.diversity(gv))
        elif samples > 1:
            rows["diversity"].append(M.diversity(gen))
    if clips == 0:
        raise ValueError(f"no clip in {urls!r} has a {W}-frame window with FLAME parameters")
    out: dict[str, Any] = {"checkpoint_step": step, "clips": clips, "samples_per_clip": samples, "window_frames": W,
                           "diversity_space": "vertices" if flame is not None else "flame_parameters"}
    for k, v in rows.items():
        out[k] = float(np.mean(v)) if v else None
    if flame is None:
        out["lve"] = out["fdd"] = None
        out["notes"] = ["lve/fdd need --flame-model and --flame-masks (FLAME_masks.pkl with 'lips', 'forehead', 'eye_region')"]
    return out
