"""Head pose (yaw, pitch, roll in degrees) from the 478-point MediaPipe face mesh: the first 468
points are the vertices of MediaPipe's canonical face model (``data/canonical_face_model_vertices.txt``,
Apache-2.0, from google/mediapipe), so ``cv2.solvePnP`` fits that rigid model to the landmarks.

Conventions (camera looking at the subject, image x right and y down): a frontal face is 0, 0, 0;
``yaw`` > 0 when the face turns towards the image's right (the subject's left), ``pitch`` > 0 when it
tilts up (chin forward), ``roll`` > 0 when it leans clockwise in the image.
"""

from __future__ import annotations

import functools
import os

import numpy as np

_MODEL_FILE = os.path.join(os.path.dirname(__file__), "data", "canonical_face_model_vertices.txt")


@functools.lru_cache(maxsize=1)
def canonical_face() -> np.ndarray:
    """(468, 3) canonical face vertices in the camera's axes (x right, y down, nose towards the camera)."""
    v = np.loadtxt(_MODEL_FILE, dtype=np.float64)
    if v.shape != (468, 3):
        raise ValueError(f"{_MODEL_FILE}: expected 468 vertices, got {v.shape}")
    return v * np.array([1.0, -1.0, -1.0])  # the model's y is up and its nose points to +z


def euler_deg(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a 3x3 rotation taking the canonical face to the camera."""
    r = rotation
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(-yaw), float(-pitch), float(roll)


def head_pose_deg(face_xy: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(yaw, pitch, roll) of one face from its mesh landmarks ``face_xy`` (478 or 468, 2) in [0, 1]
    image coordinates; NaNs when the face is missing or the fit fails. A pinhole camera with a focal
    length of the image's larger side (a ~53° field of view, typical of broadcast and phone lenses)."""
    import cv2

    pts = np.asarray(face_xy, np.float64)[:468, :2] * np.array([width, height])
    if pts.shape != (468, 2) or np.isnan(pts).any():
        return (float("nan"),) * 3
    f = float(max(width, height))
    camera = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    ok, rvec, _ = cv2.solvePnP(canonical_face(), pts, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return (float("nan"),) * 3
    return euler_deg(cv2.Rodrigues(rvec)[0])


def head_poses_deg(face: np.ndarray, width: int, height: int, block: int = 4096) -> np.ndarray:
    """(T, 3) yaw, pitch, roll per frame of a (T, 478, 3) face-mesh array (may be memory-mapped:
    read ``block`` frames at a time); NaN rows where there is no face."""
    out = np.full((len(face), 3), np.nan, np.float32)
    for start in range(0, len(face), block):
        chunk = np.asarray(face[start:start + block, :468, :2])
        for i, xy in enumerate(chunk):
            if not np.isnan(xy[0, 0]):
                out[start + i] = head_pose_deg(xy, width, height)
    return out
