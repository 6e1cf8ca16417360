"""``cnas eval paha``: generate each held-out clip from its own reference frame and audio, then
score generated against real with ``metrics.py``. The same functions score the real clips where a
metric takes one video (hand keypoints), so their levels can be compared.

Metrics whose weights are not given are reported as ``null`` with a note; weights given but not
found are an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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


def evaluate(checkpoint: str, urls: str | list[str], max_clips: int = 16, frames: int | None = None, steps: int = 25,
             audio_scale: float = 3.5, guidance: str = "none", pce_checkpoint: str | None = None, guidance_scale: float = 0.05,
             seed: int = 0, fid_weights: str | None = None, fvd_weights: str | None = None, lpips_weights: str | None = None,
             syncnet_weights: str | None = None, hands: bool = True, device: str = "cpu") -> dict[str, Any]:
    model, cfg, step = load_checkpoint(checkpoint, "univdm", device=device)
    pce = load_checkpoint(pce_checkpoint, "pce", device=device, share_with=model)[0] if pce_checkpoint else None
    W = frames or cfg.data.window_frames
    lcfg = LoaderConfig(urls=urls, view="paha", window_frames=W, image_size=cfg.data.image_size, random_window=False)
    gen, real, waves, mouths_g = [], [], [], []
    rows: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    unguided = 0
    for ex in make_loader(lcfg):
        if len(gen) >= max_clips:
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
        g = generate_video(model, cfg, ref, ex["audio"], clip_guidance, pce, regions, 1.0, steps, audio_scale, guidance_scale, seed)
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
    if syncnet_weights:
        s = [M.sync_scores(m, w, syncnet_weights) for m, w in zip(mouths_g, waves) if m is not None and len(m) >= 5]
        out["sync_c"] = float(np.mean([x["sync_c"] for x in s])) if s else None
        out["sync_d"] = float(np.mean([x["sync_d"] for x in s])) if s else None
    else:
        out["sync_c"] = out["sync_d"] = None
        out["notes"].append("sync_c/sync_d: give --syncnet-weights (SyncNet exported to TorchScript)")
    if hands:
        hg = [M.hand_keypoints(v) for v in gen]
        hr = [M.hand_keypoints(v) for v in real]
        out.update(hkc=float(np.mean([h["hkc"] for h in hg])), hkv=float(np.mean([h["hkv"] for h in hg])),
                   real_hkc=float(np.mean([h["hkc"] for h in hr])), real_hkv=float(np.mean([h["hkv"] for h in hr])))
    return out
