"""Sampling from trained trainer-2 checkpoints.

    cnas generate paha --checkpoint runs/paha-base --pce-checkpoint runs/paha-base-pce \\
        --ref anchor.png --audio speech.wav --guidance sg --out video.mp4

The reference image is centre-cropped to a square and resized to the model's ``image_size``.
PCE guidance needs each region's box in the reference: found with MediaPipe (the pose stage's
``analyse_frame`` and part boxes), or given with ``--regions regions.json``
(``{"mouth": [x0, y0, x1, y1], "hands": [...]}`` in reference-image pixels); a region with no box
is left out of the guidance with a warning. A model trained with an audio region
(``model.audio_region``) places it from the reference's part boxes, found with MediaPipe.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from trainers.checkpoint import find_checkpoint, load_checkpoint_file
from trainers.media import SR, read_audio, write_video

from .config import PahaConfig, with_settings_of_before
from .model import FPS, ClassifierModel, VideoModel
from .parts import PARTS, REGIONS
from .sampling import sample_video
from .train import load_state

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path, kind: str, use_ema: bool = True, device: str = "cpu",
                    share_with: VideoModel | None = None) -> tuple[torch.nn.Module, PahaConfig, int]:
    """The network of a trainer-2 checkpoint (``kind`` univdm or pce), with EMA weights by default.

    A PCE checkpoint loaded with ``share_with`` (the video model it guides) reuses that model's
    frozen audio front end and latent space when both were configured alike, instead of loading a
    second speech encoder and VAE."""
    ckpt = find_checkpoint(path)
    state = load_checkpoint_file(ckpt / "model.pt")
    cfg = PahaConfig.model_validate(with_settings_of_before(state["config"]))
    if cfg.train.target != kind:
        raise ValueError(f"{ckpt} is a {cfg.train.target!r} checkpoint, expected {kind!r}")
    if kind == "univdm":
        model = VideoModel(cfg.model)
    else:
        shared = {}
        if share_with is not None:
            mine, theirs = cfg.model, share_with.cfg
            if (mine.audio_backbone, mine.audio_backbone_layer) == (theirs.audio_backbone, theirs.audio_backbone_layer):
                shared["frontend"] = share_with.frontend
            if mine.vae == theirs.vae and (mine.vae or mine.latent_factor == theirs.latent_factor):  # a VAE ignores the factor
                shared["latent"] = share_with.latent
        model = ClassifierModel(cfg.model, **shared)
    load_state(model, state["model"])
    if use_ema:
        model.load_state_dict({**model.state_dict(), **state["ema"]})
    return model.to(device).eval(), cfg, state["step"]


def load_reference(path: str | Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(square-cropped RGB image at its own resolution, the same resized to size×size).

    The square is ``trainers.data.centre_square``, the rule the ``paha`` view applies to clips
    without an ingest crop, so the reference has the proportions the model was trained on."""
    from trainers.data import centre_square

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read the reference image {path}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    x0, y0, s = centre_square(img.shape[1], img.shape[0])
    square = img[y0: y0 + s, x0: x0 + s]
    return square, cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def reference_part_boxes(square: np.ndarray) -> np.ndarray:
    """The square reference's part boxes (P, 4) in its pixels, NaN where a part is not found: MediaPipe
    through the pose stage's ``analyse_frame`` and ``part_arrays``."""
    from geometry.landmarks import LandmarkModels, analyse_frame, part_arrays

    a = analyse_frame(LandmarkModels(), square)
    h, w = square.shape[:2]
    arrays = {k: np.asarray(v)[None] for k, v in a.items() if k not in ("face_boxes", "face_scores", "face_sharpness")}
    face_box = a["face_boxes"][a["face_scores"].argmax()] if len(a["face_scores"]) else np.full(4, np.nan, np.float32)
    face_score = a["face_scores"].max() if len(a["face_scores"]) else 0.0
    return np.asarray(part_arrays(arrays, np.array([face_score]), face_box[None], w, h)["part_boxes"][0], np.float32)


def reference_regions(square: np.ndarray, regions_file: str | None = None,
                      part_boxes: np.ndarray | None = None) -> dict[str, list[float]]:
    """Boxes per PCE region in the square reference's pixels: from ``regions_file``, else from its
    part boxes (``reference_part_boxes``, found with MediaPipe when not given)."""
    if regions_file:
        given = json.loads(Path(regions_file).read_text())
        unknown = set(given) - set(REGIONS)
        if unknown:
            raise ValueError(f"{regions_file}: unknown region(s) {sorted(unknown)}; known: {list(REGIONS)}")
        return {k: [float(x) for x in v] for k, v in given.items()}
    parts = reference_part_boxes(square) if part_boxes is None else part_boxes
    out = {}
    for region, idx in REGIONS.items():
        boxes = parts[list(idx)]
        boxes = boxes[~np.isnan(boxes[:, 0])]
        if len(boxes):
            out[region] = [float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())]
    return out


def generate_video(model: VideoModel, cfg: PahaConfig, ref_rgb: np.ndarray, wave: torch.Tensor, guidance: str = "none",
                   pce: ClassifierModel | None = None, regions: dict[str, list[float]] | None = None,
                   region_scale: float = 1.0, steps: int = 25, audio_scale: float = 3.5, guidance_scale: float = 0.05,
                   seed: int = 0, part_boxes: np.ndarray | None = None) -> np.ndarray:
    """Frames (T, S, S, 3) uint8 for the reference (S×S RGB) and 16 kHz audio, T = duration × 25.
    ``part_boxes`` (P, 4): the reference's part boxes in its pixels (NaN = absent), which place the
    audio region of a model trained with one (``model.audio_region``)."""
    S = cfg.data.image_size
    T = max(1, int(round(len(wave) / SR * FPS)))
    device = model.par_lambdas.device
    wave = wave.to(device)
    ref = torch.from_numpy(ref_rgb).permute(2, 0, 1).float()[None, None].to(device) / 255.0
    zr = model.encode_frames(ref)[:, 0]
    audio = model.audio_features(wave[None], T)
    kw: dict[str, Any] = {}
    if guidance != "none":
        if pce is None:
            raise ValueError(f"guidance {guidance!r} needs --pce-checkpoint (a run with train.target=pce)")
        if pce.latent.channels != model.latent.channels or pce.cfg.vae != model.cfg.vae:
            raise ValueError("the PCE checkpoint was trained in another latent space than the video model (model.vae)")
        scale = zr.shape[-1] / S * region_scale  # reference pixels → latent pixels
        boxes = {r: torch.tensor([b], dtype=torch.float32, device=device) * scale for r, b in (regions or {}).items()
                 if r in pce.pce.regions}
        missing = [r for r in pce.pce.regions if r not in boxes]
        if missing:
            log.warning("no box for region(s) %s in the reference: they are left out of the guidance", missing)
        if not boxes:
            raise ValueError("no PCE region (mouth, hands) was found in the reference; give --regions")
        kw = {"pce": pce, "raw_audio": pce.raw_audio(wave[None], T), "boxes": boxes, "guidance": guidance,
              "guidance_scale": guidance_scale}
    if model.cfg.audio_region != "frame":
        if part_boxes is None:
            log.warning("no part boxes for the reference: the audio acts on the whole frame (model.audio_region=%s)",
                        model.cfg.audio_region)
            part_boxes = np.full((len(PARTS), 4), np.nan, np.float32)
        boxes = torch.as_tensor(np.asarray(part_boxes, np.float32) * region_scale, device=device)[None]
        kw["audio_mask"] = model.audio_mask(boxes, S)
    z = sample_video(model, zr, audio, cfg.data.window_frames, seed=seed, steps=steps, audio_scale=audio_scale, **kw)
    frames = model.decode_latents(z)[0]  # (T, 3, S, S)
    return (frames.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def generate_to_file(checkpoint: str, ref: str, audio: str, out: str, guidance: str = "none", pce_checkpoint: str | None = None,
                     regions_file: str | None = None, device: str = "cpu", **kw) -> Path:
    model, cfg, _ = load_checkpoint(checkpoint, "univdm", device=device)
    pce = load_checkpoint(pce_checkpoint, "pce", device=device, share_with=model)[0] if pce_checkpoint else None
    square, ref_rgb = load_reference(ref, cfg.data.image_size)
    regions = None
    region_scale = cfg.data.image_size / square.shape[0]  # square reference pixels → view pixels
    part_boxes = reference_part_boxes(square) if cfg.model.audio_region != "frame" else None
    if guidance != "none":
        regions = reference_regions(square, regions_file, part_boxes)
    frames = generate_video(model, cfg, ref_rgb, read_audio(audio), guidance, pce, regions, region_scale,
                            part_boxes=part_boxes, **kw)
    return write_video(out, frames, cfg.data.image_size, FPS, audio)
