"""Motion stability: how much the speaker's head moves and whether the camera does.

Head scores follow TalkVid's definitions (``3_head_detail_filtering``, ``calculate_head_movement``,
``calculate_face_rotation``, ``calculate_head_orientation_score``), computed from the landmarks and
head pose the pose stage already stored instead of a second face detector:

- movement: mean over adjacent frames of the mean absolute displacement of five keypoints (eye
  centres, nose tip, mouth corners), in units of the frame's short side; ``avg`` and ``max``;
- rotation: per adjacent frames, the L2 norm of |Δpitch|, |Δyaw|, |Δroll| in degrees; ``avg``, ``max``;
- orientation: per frame sqrt(Σ (|angle| / 180 · 100)²), averaged.

Jitter (ours): mean absolute second difference of the same keypoints (frame-to-frame landmark
noise that smooth movement does not have).

Camera motion: pairs of frames ``gap`` apart spread over the clip, downscaled; corners tracked
(Lucas–Kanade) outside the speaker (face box widened, down to the frame's bottom); a similarity
transform fitted with RANSAC. From the per-pair motion of the frame centre and scale: pan (mean
velocity), zoom (mean log-scale rate) and shake (spread of the velocity), per second.
"""

from __future__ import annotations

import math

import numpy as np

#: Face-mesh points standing for insightface's five keypoints: iris centres, nose tip, mouth corners.
KEYPOINTS = (468, 473, 1, 61, 291)
#: Long side of the frames the background is tracked on.
TRACK_SIDE = 320


def head_scores(face: np.ndarray, head_pose: np.ndarray, width: int, height: int) -> dict[str, float]:
    """TalkVid's head movement / rotation / orientation scores and our jitter for a clip's
    speaker: ``face`` (T, 478, ≥2) frame-normalised mesh, ``head_pose`` (T, 3) yaw, pitch, roll in
    degrees. Frames without a face are skipped (pairs across them are not counted)."""
    out: dict[str, float] = {}
    if face is None or len(face) < 2:
        return out
    kps = np.asarray(face)[:, KEYPOINTS, :2] * np.array([width, height], np.float32)  # pixels
    short = float(min(width, height))
    step = np.abs(np.diff(kps, axis=0)).mean(axis=(1, 2)) / short
    step = step[np.isfinite(step)]
    if len(step):
        out["head_movement_avg"] = round(float(step.mean()), 5)
        out["head_movement_max"] = round(float(step.max()), 5)
    if len(kps) >= 3:
        acc = np.abs(kps[2:] - 2 * kps[1:-1] + kps[:-2]).mean(axis=(1, 2)) / short
        acc = acc[np.isfinite(acc)]
        if len(acc):
            out["head_jitter"] = round(float(acc.mean()), 5)
    if head_pose is not None and len(head_pose) >= 2:
        hp = np.asarray(head_pose, np.float64)
        rot = np.sqrt((np.abs(np.diff(hp, axis=0)) ** 2).sum(axis=1))
        rot = rot[np.isfinite(rot)]
        if len(rot):
            out["head_rotation_avg"] = round(float(rot.mean()), 4)
            out["head_rotation_max"] = round(float(rot.max()), 4)
        orient = np.sqrt(((np.abs(hp) / 180 * 100) ** 2).sum(axis=1))
        orient = orient[np.isfinite(orient)]
        if len(orient):
            out["head_orientation"] = round(float(orient.mean()), 3)
    return out


def pair_offsets(num_frames: int, fps: float, pairs: int, gap_s: float) -> list[tuple[int, int]]:
    """``pairs`` frame pairs ``(a, a + gap)`` spread evenly over a clip of ``num_frames``."""
    gap = max(1, round(gap_s * fps))
    last = num_frames - 1 - gap
    if last < 0:
        return []
    starts = sorted({round(x) for x in np.linspace(0, last, pairs)})
    return [(a, a + gap) for a in starts]


def _small_gray(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    h, w = rgb.shape[:2]
    f = min(1.0, TRACK_SIDE / max(h, w))
    small = cv2.resize(rgb, (max(2, round(w * f)), max(2, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else rgb
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), f


def _background_mask(shape: tuple[int, int], face_box: np.ndarray | None, f: float) -> np.ndarray:
    """Everything but the speaker: the face box widened by its width on each side, from half a face
    above it down to the bottom of the frame (the body)."""
    mask = np.full(shape, 255, np.uint8)
    if face_box is not None and np.isfinite(face_box).all():
        x0, y0, x1, y1 = (np.asarray(face_box) * f).tolist()
        w, h = x1 - x0, y1 - y0
        mask[max(0, int(y0 - h / 2)):, max(0, int(x0 - w)):max(0, int(math.ceil(x1 + w)))] = 0
    return mask


def pair_motion(a_rgb: np.ndarray, b_rgb: np.ndarray, face_box: np.ndarray | None) -> tuple[np.ndarray, float] | None:
    """Motion of the background from frame ``a`` to ``b``: (displacement of the frame centre in
    pixels of the full frame, log scale), or None when too little of it could be tracked."""
    import cv2

    a, f = _small_gray(a_rgb)
    b, _ = _small_gray(b_rgb)
    for mask in (_background_mask(a.shape, face_box, f), None):  # the whole frame when the speaker fills it
        p0 = cv2.goodFeaturesToTrack(a, maxCorners=200, qualityLevel=0.01, minDistance=6, mask=mask)
        if p0 is not None and len(p0) >= 12:
            break
    else:
        return None
    p1, status, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, winSize=(21, 21), maxLevel=3)
    good = status.ravel() == 1
    if good.sum() < 8:
        return None
    m, inliers = cv2.estimateAffinePartial2D(p0[good], p1[good], method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if m is None or inliers is None or inliers.sum() < 6:
        return None
    h, w = a.shape
    centre = np.array([w / 2, h / 2, 1.0])
    moved = m @ centre - centre[:2]
    scale = math.hypot(m[0, 0], m[1, 0])
    return moved / f, math.log(max(scale, 1e-6))


def camera_scores(motions: list[tuple[np.ndarray, float] | None], gap_s: float, width: int, height: int) -> dict[str, float]:
    """Pan, zoom and shake of a clip from its pairs' ``pair_motion``: pan = |mean velocity|, shake =
    spread (RMS of the per-axis standard deviations) of the velocity, both in frame short sides per
    second; zoom = |mean log-scale rate| per second. Nothing when fewer than two pairs were tracked."""
    got = [m for m in motions if m is not None]
    if len(got) < 2:
        return {}
    short = float(min(width, height))
    v = np.array([d for d, _ in got]) / gap_s / short
    z = np.array([s for _, s in got]) / gap_s
    return {"camera_pan": round(float(np.linalg.norm(v.mean(axis=0))), 5),
            "camera_zoom": round(float(abs(z.mean())), 5),
            "camera_shake": round(float(np.sqrt((v.std(axis=0) ** 2).mean())), 5)}
