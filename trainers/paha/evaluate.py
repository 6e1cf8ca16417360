"""``cnas eval paha``: generate each held-out clip from its reference frame (``paha_view``: another clip of
the same identity, else its own frames outside the window) and audio, then
score generated against real with ``metrics.py``. The same functions score the real clips where a
metric takes one video (hand keypoints), so their levels can be compared.

Metrics whose weights are not given are reported as ``null`` with a note; weights given but not
found are an error. FID and FVD need more samples than feature dimensions (2048 frames, 400
clips per set): with fewer they are ``null`` with a note, or with ``allow_few_samples`` the number
flagged ``fid_reliable`` / ``fvd_reliable`` false. The report names the ``device`` it ran on.

Conditioning is measured by things that are not the model (``conditioning`` in the report):

* **audio** (``audio_conditioning``) — Pearson correlation between the mouth opening MediaPipe
  measures on the generated frames (``metrics.mouth_series``) and the 80–4000 Hz envelope of the
  audio, with the clip's own audio (*matched*) and for the clip generated from the next clip's
  audio (*swapped*, correlated against the first clip's envelope); the real clip's own correlation
  (*ground_truth*) is the reference level, 0 is chance. ``null`` with a note when MediaPipe finds a
  face in under half the generated frames (the ``tiny`` preset's 32-px drawings have none).
* **regions** (``region_conditioning``) — the same correlation for the mean luminance of the mouth
  and of regions that must not follow the audio (forehead, torso away from the hands, background),
  from the real clip's part boxes; ``leaks`` names the control regions with |r| ≥ 0.3.
* **guidance** (``compare_guidance``, needs a PCE checkpoint) — every clip generated once per PCE
  guidance mode (none, sg, dg) from the same seed, each scored by Sync-C/Sync-D (SyncNet) and the
  mouth–envelope correlation. Never by the PCE classifiers: they guided the sampling, so their
  score would measure the guidance against itself.

    evaluate("runs/paha-tiny", "shards/test-000000.tar", PahaEvalOptions(frames=8, fid_weights="pt_inception.pth"))
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from schemas.settings import Settings
from trainers.conditioning import audio_envelope, envelope_correlation, mean_defined
from trainers.data import LoaderConfig, make_loader
from trainers.reporting import device_name

from . import metrics as M
from .generate import generate_video, load_checkpoint
from .parts import REGIONS
from .sampling import GUIDANCE

#: the mouth measure is reported when MediaPipe finds a face in at least this share of the frames
MIN_FACE_SHARE = 0.5


def _uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


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
    syncnet_weights: str | None = Field(None, description="syncnet_v2.model of syncnet_python (the ingest's sync.syncnet_model)")
    allow_few_samples: bool = Field(False, description="report FID/FVD from fewer samples than feature dimensions, "
                                                       "flagged fid_reliable/fvd_reliable false (default: null with a note)")
    hands: bool = Field(True, description="score the MediaPipe hand keypoint metrics")
    conditioning: bool = Field(True, description="the audio conditioning report (MediaPipe mouth opening vs the audio "
                                                 "envelope, matched vs swapped audio: each clip is generated a second time)")
    compare_guidance: bool = Field(False, description="generate every clip once per PCE guidance mode (none, sg, dg) "
                                                      "with the same seed; compare them by Sync-C/D and the mouth measure")
    min_face_share: float = Field(MIN_FACE_SHARE, ge=0.0, le=1.0,
                                  description="share of frames where MediaPipe must find a face for the mouth measure")
    device: str = Field("cpu", description="where to sample and run the metric networks: cpu, cuda or cuda:<index>")

    @model_validator(mode="after")
    def _needs_pce(self) -> PahaEvalOptions:
        # checked here so the mistake fails before the checkpoint is loaded
        if self.compare_guidance and not self.pce_checkpoint:
            raise ValueError("--compare-guidance needs --pce-checkpoint (sg and dg are guided by the PCE classifiers)")
        return self


def _frechet(out: dict[str, Any], name: str, n: int, dims: int, unit: str, weights: str | None, weights_hint: str,
             allow: bool, compute) -> None:
    """Fill ``<name>``, ``<name>_samples`` and ``<name>_reliable`` of the report, with a note when
    the weights are missing or the samples too few."""
    out[f"{name}_samples"] = n
    out[f"{name}_reliable"] = None
    out[name] = None
    if not weights:
        out["notes"].append(f"{name}: give --{name}-weights ({weights_hint})")
        return
    if n <= dims and not allow:
        out["notes"].append(f"{name}: {n} {unit} per set ≤ {dims} feature dimensions: the covariance is rank-deficient, "
                            "so no value is reported (score more clips, or --allow-few-samples for a flagged value)")
        return
    out[name] = compute()
    out[f"{name}_reliable"] = n > dims
    if n <= dims:
        out["notes"].append(f"{name}: from {n} {unit} per set ≤ {dims} feature dimensions: not comparable "
                            f"({name}_reliable false)")


# --- conditioning: measured on the generated frames, not by the model -----------------------
AUDIO_MEASURE = ("Pearson r of the mouth opening MediaPipe FaceMesh measures on the frames (inner-lip gap / "
                 "eye-corner distance) vs the 80-4000 Hz audio envelope")


def _mouth(video_or_series: np.ndarray) -> np.ndarray:
    """A video's ``metrics.mouth_series``, or the series itself when already measured."""
    a = np.asarray(video_or_series)
    return a.astype(np.float64) if a.ndim == 1 else M.mouth_series(a).astype(np.float64)


def _face_frames(series: list[np.ndarray]) -> tuple[int, int]:
    """(frames with a face, frames) over all the series."""
    return sum(int((~np.isnan(s)).sum()) for s in series), sum(len(s) for s in series)


def _mean_r(series: list[np.ndarray], waves: list[np.ndarray], min_face_share: float) -> tuple[float | None, int]:
    """Mean over clips of r(series, envelope of its wave), and how many clips it averages: a clip
    counts when it has a face in ``min_face_share`` of its frames and its r is defined (a mouth
    that never moves has none)."""
    rs = []
    for s, wave in zip(series, waves):
        if len(s) and np.mean(~np.isnan(s)) >= min_face_share:
            r = envelope_correlation(s, audio_envelope(np.asarray(wave, np.float32), len(s)))
            if r is not None:
                rs.append(r)
    return (float(np.mean(rs)) if rs else None), len(rs)


def audio_conditioning(generated: list[np.ndarray], waves: list[np.ndarray], swapped: list[np.ndarray] | None = None,
                       real: list[np.ndarray] | None = None, min_face_share: float = MIN_FACE_SHARE) -> dict[str, Any]:
    """The audio-conditioning report of generated videos, measured by MediaPipe, not by the model.

    ``generated[i]`` was generated from the 16 kHz audio ``waves[i]``; ``swapped[i]`` (optional)
    from the same reference with the next clip's audio ``waves[(i + 1) % n]``; ``real[i]`` is the
    real clip of ``waves[i]``. Each is a video (T, H, W, 3) uint8 or its ``metrics.mouth_series``
    (T,) when already measured. Returns:

    * ``matched`` — mean over clips of Pearson r between the mouth series of ``generated[i]`` and
      the envelope of ``waves[i]`` (``trainers.conditioning``: 80–4000 Hz RMS per frame);
    * ``swapped`` — the same for ``swapped[i]`` against the envelope of ``waves[i]``, the audio it
      was *not* given: a model that follows its audio has matched ≫ swapped ≈ 0, one that ignores
      it matched ≈ swapped (or no r at all: a mouth that never moves has no correlation);
    * ``ground_truth`` — the real clips' own r, the level a perfect model reaches; ``chance`` 0;
    * ``frames_with_face`` — the share of generated frames where MediaPipe found a face, and
      ``real_frames_with_face``; ``clips`` — how many clips each mean averages (a clip counts with
      a face in ``min_face_share`` of its frames and a defined r).

    ``matched`` and ``swapped`` are ``null`` with a note when under ``min_face_share`` of the
    generated frames show a face (``ground_truth`` likewise for the real frames): a correlation
    from a few frames would be noise."""
    gen = [_mouth(v) for v in generated]
    found, total = _face_frames(gen)
    report: dict[str, Any] = {"measure": AUDIO_MEASURE, "matched": None, "swapped": None, "ground_truth": None,
                              "chance": 0.0, "frames_with_face": found / total if total else 0.0, "generated_frames": total,
                              "real_frames_with_face": None, "clips": {"matched": 0, "swapped": 0, "ground_truth": 0},
                              "notes": []}
    notes = report["notes"]
    if total == 0 or found < min_face_share * total:
        notes.append(f"MediaPipe FaceMesh found a face in {found} of {total} generated frames "
                     f"({100 * found / max(total, 1):.0f} %), under the {100 * min_face_share:.0f} % needed: no mouth-audio "
                     "correlation is reported (the tiny preset's 32-px frames show no face; use a base-preset run)")
    else:
        report["matched"], report["clips"]["matched"] = _mean_r(gen, waves, min_face_share)
        counts = {"matched": len(gen)}
        if swapped is not None and len(swapped) > 1:
            # swapped[i] heard waves[i + 1]: correlated against waves[i], the audio it was not given
            report["swapped"], report["clips"]["swapped"] = _mean_r([_mouth(v) for v in swapped], waves, min_face_share)
            counts["swapped"] = len(swapped)
        else:
            notes.append("swapped: not measured (no clips generated from another clip's audio: that needs two or more clips)")
        for name, n in counts.items():
            if report["clips"][name] < n:
                notes.append(f"{name}: {n - report['clips'][name]} of {n} clip(s) left out (a face in under "
                             f"{100 * min_face_share:.0f} % of its frames, or a mouth that never moves: r undefined)")
    if real is not None:
        truth = [_mouth(v) for v in real]
        rfound, rtotal = _face_frames(truth)
        report["real_frames_with_face"] = rfound / rtotal if rtotal else 0.0
        if rtotal and rfound >= min_face_share * rtotal:
            report["ground_truth"], report["clips"]["ground_truth"] = _mean_r(truth, waves, min_face_share)
            if report["clips"]["ground_truth"] < len(truth):
                notes.append(f"ground_truth: {len(truth) - report['clips']['ground_truth']} of {len(truth)} real clip(s) "
                             "left out (too few frames with a face, or a mouth that never moves)")
        else:
            notes.append(f"ground_truth: MediaPipe FaceMesh found a face in {rfound} of {rtotal} real frames: not reported")
    return report


#: |r| at or above which a region that must not follow the audio is said to follow it
CONTROL_LIMIT = 0.3
#: a region whose mean luminance varies less than this (std, 0-255 levels) is still: its r would
#: measure codec noise (the synthetic shards' still forehead gives r 0.9 from x264's rate control)
STILL_LEVELS = 0.5
REGION_MEASURE = ("Pearson r of each region's mean luminance per frame vs the 80-4000 Hz audio envelope; regions "
                  "from the real clip's part boxes over the window: mouth (its box), forehead (the face box's top 30 %), "
                  "torso (its box less the face and the hands, dilated), background (outside every part box, dilated)")


def region_masks(boxes: np.ndarray, size: int, dilate: float = 0.06) -> dict[str, np.ndarray]:
    """Boolean (size, size) masks of the regions ``region_conditioning`` measures, from the part
    boxes (T, P, 4) of a window in view pixels (NaN = absent; parts in ``PARTS`` order): each part
    is the box its boxes span over the window (a mouth box grows as the mouth opens). A region
    whose parts are absent, or that ends up empty, is left out."""
    import warnings

    from .parts import PARTS

    boxes = np.asarray(boxes, np.float64).reshape(-1, *np.shape(boxes)[-2:])
    with warnings.catch_warnings():  # a part absent in every frame: all-NaN, left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        boxes = np.concatenate([np.nanmin(boxes[..., :2], axis=0), np.nanmax(boxes[..., 2:], axis=0)], axis=-1)
    yy, xx = np.mgrid[:size, :size]

    def box(b, grow: float = 0.0) -> np.ndarray:
        if b is None or np.isnan(b).any():
            return np.zeros((size, size), bool)
        g = grow * size
        return (xx >= b[0] - g) & (xx < b[2] + g) & (yy >= b[1] - g) & (yy < b[3] + g)

    part = {name: (boxes[i] if i < len(boxes) and not np.isnan(boxes[i]).any() else None) for i, name in enumerate(PARTS)}
    out: dict[str, np.ndarray] = {}
    if part.get("mouth") is not None:
        out["mouth"] = box(part["mouth"])
    if part.get("face") is not None:
        f = part["face"]
        out["forehead"] = box([f[0], f[1], f[2], f[1] + 0.3 * (f[3] - f[1])]) & ~box(part.get("mouth"), dilate)
    hands = box(part.get("left_hand"), dilate) | box(part.get("right_hand"), dilate)
    if part.get("torso") is not None:
        out["torso"] = box(part["torso"]) & ~hands & ~box(part.get("face"), dilate)
    anything = np.zeros((size, size), bool)
    for b in part.values():
        anything |= box(b, dilate)
    out["background"] = ~anything
    return {k: m for k, m in out.items() if m.any()}


def _luminance_series(video: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lum = video[..., 0] * 0.299 + video[..., 1] * 0.587 + video[..., 2] * 0.114  # (T, H, W)
    return lum[:, mask].mean(axis=1).astype(np.float64)


def region_conditioning(generated: list[np.ndarray], waves: list[np.ndarray], boxes: list[np.ndarray],
                        real: list[np.ndarray] | None = None, limit: float = CONTROL_LIMIT,
                        still: float = STILL_LEVELS) -> dict[str, Any]:
    """Where the audio acts: for each region (``region_masks``) the mean over clips of Pearson r
    between its luminance per frame in ``generated[i]`` and the envelope of ``waves[i]`` (and the
    same for ``real[i]``, the level of the data), and the mean std of that luminance (``levels``,
    0-255). A region that varies less than ``still`` levels in a clip gives that clip no r (its r
    would be codec noise). The mouth should follow the audio; forehead, torso and background should
    not: ``leaks`` lists the control regions with |r| ≥ ``limit``. Needs no face detector, so it
    measures the tiny preset's small frames too."""

    def measure(videos: list[np.ndarray]) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        rs: dict[str, list[float]] = {}
        levels: dict[str, list[float]] = {}
        for video, wave, b in zip(videos, waves, boxes):
            env = audio_envelope(np.asarray(wave, np.float32), len(video))
            for name, mask in region_masks(np.asarray(b, np.float32), video.shape[1]).items():
                series = _luminance_series(video, mask)
                levels.setdefault(name, []).append(float(series.std()))
                r = envelope_correlation(series, env) if series.std() >= still else None
                if r is not None:
                    rs.setdefault(name, []).append(r)
        return ({k: float(np.mean(v)) for k, v in rs.items()}, {k: float(np.mean(v)) for k, v in levels.items()},
                {k: len(v) for k, v in rs.items()})

    regions, levels, clips = measure(generated)
    real_r, real_levels, _ = measure(real) if real is not None else (None, None, None)
    return {"measure": REGION_MEASURE, "generated": regions, "levels": levels, "real": real_r, "real_levels": real_levels,
            "clips": clips, "control_limit": limit, "still_levels": still,
            "leaks": sorted(k for k, r in regions.items() if k != "mouth" and abs(r) >= limit)}


def _first_frame_regions(part_masks: torch.Tensor) -> dict[str, list[float]]:
    """PCE region boxes (view pixels) of a clip's first frame: the regions seen there."""
    from .parts import region_boxes

    regions = {}
    for r in REGIONS:
        box, seen = region_boxes(part_masks[None, :1], r)
        if bool(seen[0]):
            regions[r] = box[0].tolist()
    return regions


def _sync(videos: list[np.ndarray], waves: list[np.ndarray], weights: str, device: str) -> dict[str, Any]:
    """Mean Sync-C / Sync-D, median offset and the number of clips scored: each video on its own face
    track (``metrics.face_boxes``), never on the real clip's boxes (a face track of 6+ frames)."""
    scored = [M.sync_scores(v, M.face_boxes(v), w, weights, device=device) for v, w in zip(videos, waves)]
    s = [x for x in scored if x is not None]
    out: dict[str, Any] = {"sync_c": None, "sync_d": None, "sync_offset": None, "sync_clips": len(s)}
    if s:
        out["sync_c"] = float(np.mean([x["sync_c"] for x in s]))
        out["sync_d"] = float(np.mean([x["sync_d"] for x in s]))
        out["sync_offset"] = int(np.median([x["sync_offset"] for x in s]))
    return out


def evaluate(checkpoint: str, urls: str | list[str], options: PahaEvalOptions = PahaEvalOptions()) -> dict[str, Any]:
    """Score the UniVDM checkpoint (a run folder or one ``step_*``) on the clips of ``urls``: a
    report of mean metrics, ``null`` for those whose weights were not given (with ``notes``), and
    ``conditioning`` (see the module docstring)."""
    guidance, device, pce_checkpoint = options.guidance, options.device, options.pce_checkpoint
    lpips_weights, fid_weights, fvd_weights = options.lpips_weights, options.fid_weights, options.fvd_weights
    for weights, what in ((fid_weights, "FID"), (fvd_weights, "FVD"), (lpips_weights, "LPIPS"),
                          (options.syncnet_weights, "Sync-C/Sync-D")):
        if weights:  # a path that does not exist is an error before any clip is generated
            M.need_weights(weights, what)
    model, cfg, step = load_checkpoint(checkpoint, "univdm", device=device)
    pce = load_checkpoint(pce_checkpoint, "pce", device=device, share_with=model)[0] if pce_checkpoint else None
    W = options.frames or cfg.data.window_frames
    lcfg = LoaderConfig(urls=urls, view="paha", window_frames=W, image_size=cfg.data.image_size, random_window=False,
                        max_member_bytes=cfg.data.max_member_mb * 2**20, reference_bank_clips=cfg.data.reference_bank_clips)
    need_regions = guidance != "none" or options.compare_guidance
    clips: list[dict[str, Any]] = []
    for ex in make_loader(lcfg):
        if len(clips) >= options.max_clips:
            break
        clips.append({"ref": _uint8(ex["reference"][None])[0], "wave": ex["audio"], "real": _uint8(ex["video"]),
                      "regions": _first_frame_regions(ex["part_masks"]) if need_regions else None,
                      "boxes": ex["part_boxes"].numpy()})
    if not clips:
        raise ValueError(f"no clip in {urls!r} has a {W}-frame window with pose data")

    def generate(clip: dict[str, Any], mode: str, wave: torch.Tensor | None = None) -> tuple[np.ndarray, bool]:
        """``clip``'s frames under PCE guidance ``mode`` from ``wave`` (default: its own audio), with
        the evaluation's seed; True when ``mode`` fell back to none (no region box in the first frame)."""
        used = mode if mode == "none" or clip["regions"] else "none"
        frames = generate_video(model, cfg, clip["ref"], clip["wave"] if wave is None else wave, used, pce, clip["regions"],
                                1.0, options.steps, options.audio_scale, options.guidance_scale, options.seed,
                                part_boxes=clip["boxes"][0])  # the window's first frame stands in for the reference's boxes
        return frames, used != mode

    gen, real = [], [c["real"] for c in clips]
    waves = [c["wave"].numpy() for c in clips]
    rows: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    unguided = 0
    for clip in clips:
        g, fell_back = generate(clip, guidance)
        unguided += fell_back
        r = clip["real"]
        gen.append(g)
        rows["psnr"].append(M.psnr(g, r))
        rows["ssim"].append(M.ssim(g, r))
        if lpips_weights:
            rows["lpips"].append(M.lpips_distance(g, r, lpips_weights, device))
    out: dict[str, Any] = {"checkpoint_step": step, "clips": len(gen), "frames_per_clip": W, "guidance": guidance,
                           "device": device_name(torch.device(device)), "notes": []}
    if unguided:
        out["notes"].append(f"{unguided} clip(s) had no mouth/hands box in their first frame: generated without PCE guidance")
    for k, v in rows.items():
        out[k] = float(np.mean(v)) if v else None
    if not lpips_weights:
        out["notes"].append("lpips: give --lpips-weights (torchvision alexnet state dict)")

    allow = options.allow_few_samples
    frames_per_set = min(sum(map(len, gen)), sum(map(len, real)))
    _frechet(out, "fid", frames_per_set, M.FID_DIMS, "frames", fid_weights, "pt_inception-2015-12-05-6726825d.pth", allow,
             lambda: M.fid(gen, real, fid_weights, allow_few_samples=True, device=device))
    clip_frames = min(M.FVD_FRAMES, W)
    if fvd_weights and clip_frames < M.FVD_FRAMES:
        out["notes"].append(f"fvd: {clip_frames}-frame clips (StyleGAN-V's FVD uses {M.FVD_FRAMES}): not comparable with published values")
    clips_per_set = min(len(M.fvd_clips(gen, clip_frames)), len(M.fvd_clips(real, clip_frames)))
    _frechet(out, "fvd", clips_per_set, M.I3D_DIMS, "clips", fvd_weights, "i3d_torchscript.pt", allow,
             lambda: M.fvd(gen, real, fvd_weights, clip_frames=clip_frames, allow_few_samples=True, device=device,
                           seed=options.seed))

    out["sync_c"] = out["sync_d"] = out["sync_offset"] = None
    if options.syncnet_weights:
        out.update(_sync(gen, waves, options.syncnet_weights, device))
        if out["sync_clips"] < len(gen):
            out["notes"].append(f"sync: {len(gen) - out['sync_clips']} clip(s) without a face track of 6+ frames were not scored")
    else:
        out["notes"].append("sync_c/sync_d: give --syncnet-weights (syncnet_v2.model of syncnet_python)")
    if options.hands:
        hg = [M.hand_keypoints(v) for v in gen]
        hr = [M.hand_keypoints(v) for v in real]
        # HKC and HKV are undefined for a video without hands: averaged over the others, else None
        out.update(hkc=mean_defined([h["hkc"] for h in hg]), hkv=mean_defined([h["hkv"] for h in hg]),
                   real_hkc=mean_defined([h["hkc"] for h in hr]), real_hkv=mean_defined([h["hkv"] for h in hr]),
                   hand_clips=sum(h["hand_frames"] > 0 for h in hg), real_hand_clips=sum(h["hand_frames"] > 0 for h in hr))
        no_conf = sum(h["hand_frames"] > 0 and h["hkc"] is None for h in hg + hr)
        if no_conf:
            out["notes"].append(f"hkc: {no_conf} video(s) (generated and real) show hands but no body pose: MediaPipe gives "
                                "those hand keypoints no confidence, so they are left out of HKC")

    # conditioning: notes stay inside its blocks (the top-level notes are about the metrics above)
    out["conditioning"] = {}
    mouths = None
    if options.conditioning:
        mouths = [M.mouth_series(v) for v in gen]
        found, total = _face_frames(mouths)
        swapped = None
        # the swapped clips cost a second generation each: only when there are two clips and faces to measure
        if len(clips) > 1 and found >= options.min_face_share * total:
            swapped = [generate(clip, guidance, clips[(i + 1) % len(clips)]["wave"])[0] for i, clip in enumerate(clips)]
        out["conditioning"]["audio"] = audio_conditioning(mouths, waves, swapped, real, options.min_face_share)
        out["conditioning"]["regions"] = region_conditioning(gen, waves, [c["boxes"] for c in clips], real)
    if options.compare_guidance:
        out["conditioning"]["guidance"] = _compare_guidance(gen if mouths is None else mouths, gen, unguided, clips, waves,
                                                            generate, options)
    return out


def _compare_guidance(main_mouths: list[np.ndarray], main_videos: list[np.ndarray], main_unguided: int,
                      clips: list[dict[str, Any]], waves: list[np.ndarray], generate,
                      options: PahaEvalOptions) -> dict[str, Any]:
    """Per PCE guidance mode (none, sg, dg): every clip generated from the same seed (the main
    pass's videos reused for its own mode), scored by Sync-C/D and the mouth–envelope correlation."""
    modes: dict[str, dict[str, Any]] = {}
    for mode in GUIDANCE:
        if mode == options.guidance:
            videos, mouths, fell_back = main_videos, main_mouths, main_unguided
        else:
            results = [generate(clip, mode) for clip in clips]
            videos = mouths = [v for v, _ in results]
            fell_back = sum(f for _, f in results)
        block: dict[str, Any] = {"sync_c": None, "sync_d": None, "sync_offset": None, "sync_clips": None}
        if options.syncnet_weights:
            block.update(_sync(videos, waves, options.syncnet_weights, options.device))
        audio = audio_conditioning(mouths, waves, min_face_share=options.min_face_share)
        block.update(mouth_envelope_r=audio["matched"], mouth_clips=audio["clips"]["matched"],
                     frames_with_face=audio["frames_with_face"], unguided_clips=fell_back,
                     notes=[n for n in audio["notes"] if not n.startswith("swapped")])
        modes[mode] = block
    notes = [] if options.syncnet_weights else ["sync_c/sync_d: give --syncnet-weights (syncnet_v2.model of syncnet_python)"]
    if any(b["unguided_clips"] for b in modes.values()):
        notes.append("unguided_clips: clips with no mouth/hands box in their first frame, generated without PCE guidance")
    return {"measure": "each clip generated once per PCE guidance mode from the same seed, scored by SyncNet (Sync-C/D) "
                       "and the MediaPipe mouth opening vs audio envelope (mouth_envelope_r); the PCE classifiers that "
                       "guided the sampling are deliberately not the judge",
            "seed": options.seed, "guidance_scale": options.guidance_scale, "modes": modes, "notes": notes}
