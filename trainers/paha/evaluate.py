"""``cnas eval paha``: generate each held-out clip from its own reference frame and audio, then
score generated against real with ``metrics.py``. The same functions score the real clips where a
metric takes one video (hand keypoints), so their levels can be compared.

Metrics whose weights are not given are reported as ``null`` with a note; weights given but not
found are an error.

    evaluate("runs/paha-tiny", "shards/test-000000.tar", PahaEvalOptions(frames=8, fid_weights="pt_inception.pth"))
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from schemas.settings import Settings
from trainers.data import LoaderConfig, make_loader

from . import metrics as M
from .generate import generate_video, load_checkpoint
from .parts import REGIONS


def _uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _mouth_crops(video: np.ndarray, masks: torch.Tensor, size: int = 96) -> np.ndarray | None:
    import cv2

    m = masks[:, REGIONS["mouth"][0]].amax(dim=0) > 0  # (S, S) union over frames
    if not m.any():
        return None
    ys, xs = torch.nonzero(m, as_tuple=True)
    cy, cx = (ys.min() + ys.max()).item() / 2, (xs.min() + xs.max()).item() / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()).item() * 0.75 + 4  # SyncNet sees the lower face
    S = video.shape[1]
    y0, y1 = int(max(0, cy - half)), int(min(S, cy + half))
    x0, x1 = int(max(0, cx - half)), int(min(S, cx + half))
    return np.stack([cv2.resize(f[y0:y1, x0:x1], (size, size)) for f in video])


class PahaEvalOptions(Settings):
    """How ``evaluate`` generates and scores (the ``cnas eval paha`` options)."""

    max_clips: int = Field(16, description="clips to score, each from its first window")
    frames: int | None = Field(None, description="frames per clip (default: the training window)")
    steps: int = Field(25, description="DDIM steps")
    audio_scale: float = Field(3.5, description="classifier-free guidance scale for audio")
    guidance: Literal["none", "sg", "dg"] = Field("none", description="PCE classifier guidance")
    pce_checkpoint: str | None = Field(None, description="PCE run folder (needed for guidance sg|dg)")
    guidance_scale: float = Field(0.05, description="PCE guidance step, a share of the latents' spread")
    seed: int = 0
    fid_weights: str | None = Field(None, description="pt_inception-2015-12-05-6726825d.pth")
    fvd_weights: str | None = Field(None, description="i3d_torchscript.pt")
    lpips_weights: str | None = Field(None, description="torchvision alexnet state dict (alexnet-owt-7be5be79.pth)")
    syncnet_weights: str | None = Field(None, description="SyncNet exported to TorchScript (docs/paha.md)")
    hands: bool = Field(True, description="score the MediaPipe hand keypoint metrics")
    device: str = Field("cpu", description="where to sample: cpu, cuda or cuda:<index>")


def evaluate(checkpoint: str, urls: str | list[str], options: PahaEvalOptions = PahaEvalOptions()) -> dict[str, Any]:
    """Score the UniVDM checkpoint (a run folder or one ``step_*``) on the clips of ``urls``: a
    report of mean metrics, ``null`` for those whose weights were not given (with ``notes``)."""
    guidance, device, pce_checkpoint = options.guidance, options.device, options.pce_checkpoint
    lpips_weights, fid_weights, fvd_weights = options.lpips_weights, options.fid_weights, options.fvd_weights
    model, cfg, step = load_checkpoint(checkpoint, "univdm", device=device)
    pce = load_checkpoint(pce_checkpoint, "pce", device=device, share_with=model)[0] if pce_checkpoint else None
    W = options.frames or cfg.data.window_frames
    lcfg = LoaderConfig(urls=urls, view="paha", window_frames=W, image_size=cfg.data.image_size, random_window=False)
    gen, real, waves, mouths_g = [], [], [], []
    rows: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    unguided = 0
    for ex in make_loader(lcfg):
        if len(gen) >= options.max_clips:
            break
        ref = _uint8(ex["reference"][None])[0]
        regions = None
        if guidance != "none":  # region boxes of the clip's own first frame
            from .parts import region_boxes

            regions = {}
            for r in REGIONS:
                box, seen = region_boxes(ex["part_masks"][None, :1], r)
                if bool(seen[0]):
                    regions[r] = box[0].tolist()
        clip_guidance = guidance if regions or guidance == "none" else "none"
        unguided += clip_guidance != guidance  # no region box in its first frame: generated without PCE guidance
        g = generate_video(model, cfg, ref, ex["audio"], clip_guidance, pce, regions, 1.0, options.steps, options.audio_scale,
                           options.guidance_scale, options.seed)
        r = _uint8(ex["video"])
        gen.append(g)
        real.append(r)
        waves.append(ex["audio"].numpy())
        rows["psnr"].append(M.psnr(g, r))
        rows["ssim"].append(M.ssim(g, r))
        if lpips_weights:
            rows["lpips"].append(M.lpips_distance(g, r, lpips_weights))
        mouths_g.append(_mouth_crops(g, ex["part_masks"]))
    if not gen:
        raise ValueError(f"no clip in {urls!r} has a {W}-frame window with pose data")
    out: dict[str, Any] = {"checkpoint_step": step, "clips": len(gen), "frames_per_clip": W, "guidance": guidance, "notes": []}
    if unguided:
        out["notes"].append(f"{unguided} clip(s) had no mouth/hands box in their first frame: generated without PCE guidance")
    for k, v in rows.items():
        out[k] = float(np.mean(v)) if v else None
    if not lpips_weights:
        out["notes"].append("lpips: give --lpips-weights (torchvision alexnet state dict)")
    out["fid"] = M.fid(gen, real, fid_weights) if fid_weights else None
    if not fid_weights:
        out["notes"].append("fid: give --fid-weights (pt_inception-2015-12-05-6726825d.pth)")
    out["fvd"] = M.fvd(gen, real, fvd_weights, clip_frames=min(16, W)) if fvd_weights else None
    if not fvd_weights:
        out["notes"].append("fvd: give --fvd-weights (i3d_torchscript.pt)")
    if options.syncnet_weights:
        s = [M.sync_scores(m, w, options.syncnet_weights) for m, w in zip(mouths_g, waves) if m is not None and len(m) >= 5]
        out["sync_c"] = float(np.mean([x["sync_c"] for x in s])) if s else None
        out["sync_d"] = float(np.mean([x["sync_d"] for x in s])) if s else None
    else:
        out["sync_c"] = out["sync_d"] = None
        out["notes"].append("sync_c/sync_d: give --syncnet-weights (SyncNet exported to TorchScript)")
    if options.hands:
        hg = [M.hand_keypoints(v) for v in gen]
        hr = [M.hand_keypoints(v) for v in real]
        def mean_defined(values):  # HKV is undefined for a video without hands: averaged over the others, else None
            defined = [v for v in values if v is not None]
            return float(np.mean(defined)) if defined else None

        out.update(hkc=float(np.mean([h["hkc"] for h in hg])), hkv=mean_defined([h["hkv"] for h in hg]),
                   real_hkc=float(np.mean([h["hkc"] for h in hr])), real_hkv=mean_defined([h["hkv"] for h in hr]))
    return out
