"""Make a real photo talk: open its mouth frame by frame with the loudness of a recording.

The face mesh is found once on the photo (MediaPipe, static mode). Every frame is a
piecewise-affine warp of the photo over a Delaunay triangulation of the mesh landmarks plus fixed
anchors around the face: the upper lip and everything above it stay, the lower lip, chin and jaw
move down by ``opening × max_drop``, fading out towards the jaw line. The gap between the inner lips
is then painted as a dark mouth cavity, so a face-mesh tracker sees the lips part with the speech
(what the sync check measures). Warps are precomputed for ``levels`` openings and reused.

Used by the demo inputs and the test fixtures (genuine clips, dubs, frozen-mouth voice-overs,
shifted audio, a two-face frame): the applied envelope and shift are the known answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# Inner lip contour of the 478-point mesh, in order around the mouth (MediaPipe FACEMESH_LIPS).
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
UPPER_INNER, LOWER_INNER = 13, 14
MOUTH_CORNERS = (61, 291)
EYE_CORNERS = (33, 263)  # outer corners: their distance does not change when the mouth opens
CHIN = 152


@dataclass
class FaceWarp:
    """A photo with its mesh and the precomputed warps of its mouth opening."""

    photo: np.ndarray  # (H, W, 3) uint8
    mesh: np.ndarray  # (478, 2) pixels
    frames: list[np.ndarray]  # one warped photo per opening level
    levels: np.ndarray  # opening of each level in [0, 1]

    def frame(self, opening: float) -> np.ndarray:
        """The photo with the mouth opened by ``opening`` in [0, 1] (nearest precomputed level)."""
        return self.frames[int(np.abs(self.levels - np.clip(opening, 0.0, 1.0)).argmin())]


def photo_mesh(photo: np.ndarray, max_faces: int = 4) -> list[np.ndarray]:
    """The 478-point face meshes of a still photo, in pixels, largest face first.

    FaceMesh's own detector is short-range: a small face (or a three-quarter view, like scikit-image's
    cameraman) is found by the full-range face detector first, and meshed on an upscaled crop."""
    import cv2
    import mediapipe as mp

    h, w = photo.shape[:2]
    photo = np.ascontiguousarray(photo)
    with _native_logs_to_devnull(), mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                                                    refine_landmarks=True) as fm:
        found = fm.process(photo).multi_face_landmarks or []
        meshes = [np.array([[p.x * w, p.y * h] for p in f.landmark], np.float64) for f in found]
        if not meshes:
            with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as fd:
                detections = fd.process(photo).detections or []
            for d in detections[:max_faces]:
                b = d.location_data.relative_bounding_box
                cx, cy, side = (b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h, 2.0 * max(b.width * w, b.height * h)
                x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
                x1, y1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
                crop = cv2.resize(photo[y0:y1, x0:x1], (512, 512), interpolation=cv2.INTER_CUBIC)
                got = fm.process(crop).multi_face_landmarks
                if got:
                    pts = np.array([[p.x, p.y] for p in got[0].landmark], np.float64)
                    meshes.append(pts * [x1 - x0, y1 - y0] + [x0, y0])
    return sorted(meshes, key=lambda m: -np.ptp(m[:, 1]))


class _native_logs_to_devnull:
    """Send file descriptor 2 (MediaPipe's C++ logging) to /dev/null for a while: keeps the
    terminal of `make demo` quiet; Python exceptions still propagate."""

    def __enter__(self):
        import sys

        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        return False


def _drop_weights(mesh: np.ndarray) -> np.ndarray:
    """How much of the jaw drop each mesh point follows: 1 for the lower lip and chin, 0 above the
    mouth line, fading to 0 towards the sides of the jaw."""
    left, right = mesh[MOUTH_CORNERS[0]], mesh[MOUTH_CORNERS[1]]
    cx = (left[0] + right[0]) / 2
    line_y = (left[1] + right[1]) / 2
    lip_y = mesh[LOWER_INNER, 1]
    half_jaw = max(np.ptp(mesh[:, 0]) / 2, 1.0)
    wy = np.clip((mesh[:, 1] - line_y) / max(lip_y - line_y, 1.0), 0.0, 1.0)
    wx = np.clip(1.0 - np.abs(mesh[:, 0] - cx) / half_jaw, 0.0, 1.0) ** 0.7
    w = wy * wx
    w[list(INNER_LIPS[:11])] = 0.0  # the upper inner lip (78 … 308) stays
    return w


def face_warp(photo: np.ndarray, mesh: np.ndarray, levels: int = 12, max_drop: float = 0.3) -> FaceWarp:
    """Precompute ``levels`` warps of ``photo`` with the mouth of ``mesh`` opened from 0 to
    ``max_drop`` × the eye-corner distance."""
    import cv2
    from scipy.spatial import Delaunay

    h, w = photo.shape[:2]
    iod = float(np.linalg.norm(mesh[EYE_CORNERS[0]] - mesh[EYE_CORNERS[1]]))
    weights = _drop_weights(mesh)
    # fixed anchors: a ring around the face (so the warp stays local) and the ROI corners
    x0, y0 = mesh.min(axis=0)
    x1, y1 = mesh.max(axis=0)
    pad = 0.35 * max(x1 - x0, y1 - y0)
    rx0, ry0 = max(0.0, x0 - pad), max(0.0, y0 - pad)
    rx1, ry1 = min(w - 1.0, x1 + pad), min(h - 1.0, y1 + pad)
    ring = [(rx0 + (rx1 - rx0) * t, y) for t in np.linspace(0, 1, 9) for y in (ry0, ry1)]
    ring += [(x, ry0 + (ry1 - ry0) * t) for t in np.linspace(0, 1, 9)[1:-1] for x in (rx0, rx1)]
    anchors = np.array(ring)
    ix0, iy0, ix1, iy1 = int(rx0), int(ry0), int(np.ceil(rx1)), int(np.ceil(ry1))
    yy, xx = np.mgrid[iy0:iy1 + 1, ix0:ix1 + 1].astype(np.float64)
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    openings = np.linspace(0.0, 1.0, levels)
    frames = []
    for opening in openings:
        dest = mesh.copy()
        dest[:, 1] += weights * opening * max_drop * iod
        src_pts, dst_pts = np.vstack([mesh, anchors]), np.vstack([dest, anchors])
        tri = Delaunay(dst_pts)
        simplex = tri.find_simplex(pixels)
        inside = simplex >= 0
        # barycentric coordinates in the destination triangle, applied to the source triangle
        t = tri.transform[simplex[inside]]
        b = np.einsum("nij,nj->ni", t[:, :2], pixels[inside] - t[:, 2])
        bary = np.concatenate([b, 1 - b.sum(axis=1, keepdims=True)], axis=1)
        src = np.einsum("ni,nij->nj", bary, src_pts[tri.simplices[simplex[inside]]])
        map_xy = pixels.copy()
        map_xy[inside] = src
        mx = map_xy[:, 0].reshape(xx.shape).astype(np.float32)
        my = map_xy[:, 1].reshape(xx.shape).astype(np.float32)
        out = photo.copy()
        out[iy0:iy1 + 1, ix0:ix1 + 1] = cv2.remap(photo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if opening > 0:
            cavity = np.round(dest[list(INNER_LIPS)]).astype(np.int32)
            cv2.fillPoly(out, [cavity], (45, 18, 22), lineType=cv2.LINE_AA)
        frames.append(out)
    return FaceWarp(photo, mesh, frames, openings)


def speech_envelope(audio: np.ndarray, sr: int, fps: float, num_frames: int) -> np.ndarray:
    """Loudness per video frame in [0, 1]: RMS of each frame's samples over the loudest frame's,
    with a 10 % floor removed (breath and hiss keep the mouth shut)."""
    hop = sr / fps
    rms = np.array([np.sqrt(np.mean(audio[int(i * hop): int((i + 1) * hop)].astype(np.float64) ** 2) + 1e-12)
                    for i in range(num_frames)])
    env = rms / (rms.max() + 1e-9)
    return np.clip((env - 0.1) / 0.9, 0.0, 1.0)
