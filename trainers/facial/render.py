"""A small software renderer for mesh previews: FLAME vertices → shaded frames → mp4 (with audio).

Painter's algorithm (triangles sorted far to near, back faces culled, Lambert shading, filled with
OpenCV) — a preview, not a production renderer; it needs no GPU and no pytorch3d.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from trainers.media import write_video


def flame_vertices(flame_layer, motion: np.ndarray, batch: int = 64) -> np.ndarray:
    """(T, 53) expression + jaw → (T, V, 3) vertices with neutral shape and head pose."""
    out = []
    for i in range(0, len(motion), batch):
        m = torch.as_tensor(motion[i: i + batch], dtype=torch.float32)
        pose = torch.zeros(len(m), 6)
        pose[:, 3:6] = m[:, 50:53]
        with torch.no_grad():
            v, _ = flame_layer(torch.zeros(len(m), 100), m[:, :50], pose)
        out.append(v.numpy())
    return np.concatenate(out)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, size: int = 256, center: np.ndarray | None = None,
                scale: float | None = None) -> np.ndarray:
    """One frame (size, size, 3) uint8 of a mesh seen from +z (x right, y up)."""
    center = vertices.mean(0) if center is None else center
    if scale is None:
        scale = 0.8 * size / max(np.ptp(vertices[:, :2], axis=0).max(), 1e-8)
    xy = (vertices[:, :2] - center[:2]) * scale
    px = np.stack([size / 2 + xy[:, 0], size / 2 - xy[:, 1]], axis=1)
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    front = normals[:, 2] > 0
    shade = np.clip(normals[:, 2], 0, 1) * 0.8 + 0.2
    order = np.argsort(tri[:, :, 2].mean(1))  # far (small z) first
    img = np.full((size, size, 3), 30, np.uint8)
    pts = np.round(px[faces] * 16).astype(np.int32)  # 4 fractional bits for smooth edges
    for i in order:
        if front[i]:
            c = int(200 * shade[i])
            cv2.fillConvexPoly(img, pts[i], (c, c, int(c * 0.95)), lineType=cv2.LINE_AA, shift=4)
    return img


def write_preview(path: str | Path, vertices: np.ndarray, faces: np.ndarray, fps: float, audio: str | None = None,
                  size: int = 256) -> Path:
    """Render every frame (fixed framing from the first) and encode an H.264 mp4, muxing ``audio``."""
    center = vertices[0].mean(0)
    scale = 0.8 * size / max(np.ptp(vertices[0][:, :2], axis=0).max(), 1e-8)
    return write_video(path, (render_mesh(v, faces, size, center, scale) for v in vertices), size, fps, audio)
