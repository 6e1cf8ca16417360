"""FLAME as a differentiable PyTorch layer (linear blend skinning with shape, expression, pose and
the landmark embedding) and DECA's orthographic camera. Used by the FLAME stage and by trainer 1's
metrics and previews."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .flame import EXP, SHAPE


def _rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle (N,3) → rotation matrices (N,3,3)."""
    angle = torch.linalg.norm(rvec + 1e-8, dim=1, keepdim=True)
    axis = rvec / angle
    cos, sin = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zeros = torch.zeros_like(x)
    K = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rvec.dtype, device=rvec.device)[None]
    return eye + sin * K + (1 - cos) * (K @ K)


class FlameLayer(nn.Module):
    """FLAME as a differentiable function of (shape, expression, pose).

    ``forward(shape (B,100), exp (B,50), pose (B,6) = [global, jaw] axis-angle, neck (B,3)=0,
    eyes (B,6)=0)`` → vertices (B,V,3) and landmarks (B,L,3) from the landmark embedding.
    Linear blend skinning over the 5 joints (global, neck, jaw, left eye, right eye).
    """

    def __init__(self, flame: dict[str, np.ndarray], landmarks: dict[str, np.ndarray] | None = None):
        super().__init__()
        f32 = lambda a: torch.tensor(np.asarray(a, np.float32))  # noqa: E731
        self.register_buffer("v_template", f32(flame["v_template"]))
        sd = np.asarray(flame["shapedirs"], np.float32)
        # FLAME packs 300 shape + 100 expression components; DECA uses the first 100 + 50.
        n_shape = sd.shape[2] - 100 if sd.shape[2] >= 400 else SHAPE
        self.register_buffer("shapedirs", f32(sd[:, :, :SHAPE]))
        self.register_buffer("expdirs", f32(sd[:, :, n_shape : n_shape + EXP]))
        pd = np.asarray(flame["posedirs"], np.float32)
        self.register_buffer("posedirs", f32(pd.reshape(-1, pd.shape[-1]).T))  # (36, V*3)
        self.register_buffer("J_regressor", f32(flame["J_regressor"]))
        self.register_buffer("lbs_weights", f32(flame["weights"]))
        parents = np.asarray(flame["kintree_table"])[0].astype(np.int64)
        parents[0] = -1
        self.parents = parents.tolist()
        self.register_buffer("faces", torch.tensor(np.asarray(flame["f"], np.int64)))
        if landmarks is not None:
            key = "full_lmk_faces_idx" if "full_lmk_faces_idx" in landmarks else "static_lmk_faces_idx"
            bary = key.replace("faces_idx", "bary_coords")
            self.register_buffer("lmk_faces_idx", torch.tensor(np.asarray(landmarks[key]).reshape(-1).astype(np.int64)))
            self.register_buffer("lmk_bary", f32(np.asarray(landmarks[bary]).reshape(-1, 3)))
        else:
            self.lmk_faces_idx = None

    def forward(self, shape, exp, pose, neck=None, eyes=None):
        B = shape.shape[0]
        neck = torch.zeros(B, 3, dtype=shape.dtype, device=shape.device) if neck is None else neck
        eyes = torch.zeros(B, 6, dtype=shape.dtype, device=shape.device) if eyes is None else eyes
        full_pose = torch.cat([pose[:, :3], neck, pose[:, 3:6], eyes], dim=1)  # global, neck, jaw, eyes
        v_shaped = (self.v_template[None] + torch.einsum("bl,vcl->bvc", shape, self.shapedirs)
                    + torch.einsum("bl,vcl->bvc", exp, self.expdirs))
        J = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)
        rot = _rodrigues(full_pose.reshape(-1, 3)).view(B, -1, 3, 3)
        eye = torch.eye(3, dtype=shape.dtype, device=shape.device)
        pose_feature = (rot[:, 1:] - eye).reshape(B, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(B, -1, 3)
        # rigid transforms along the kinematic chain
        rel_J = J.clone()
        rel_J[:, 1:] = J[:, 1:] - J[:, self.parents[1:]]
        top = torch.cat([rot, rel_J[..., None]], dim=-1)
        bottom = torch.tensor([0, 0, 0, 1], dtype=shape.dtype, device=shape.device).expand(B, rot.shape[1], 1, 4)
        local = torch.cat([top, bottom], dim=-2)
        chain = [local[:, 0]]
        for i in range(1, len(self.parents)):
            chain.append(chain[self.parents[i]] @ local[:, i])
        world = torch.stack(chain, dim=1)
        # remove the rest-pose joint location so transforms apply to vertices
        J_h = torch.cat([J, torch.zeros_like(J[..., :1])], dim=-1)[..., None]
        world = world - torch.cat([torch.zeros_like(world[..., :3]), world @ J_h], dim=-1)
        T = torch.einsum("vj,bjxy->bvxy", self.lbs_weights, world)
        v_h = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], dim=-1)
        verts = (T @ v_h[..., None])[..., :3, 0]
        lmk = None
        if self.lmk_faces_idx is not None:
            tri = verts[:, self.faces[self.lmk_faces_idx]]  # (B, L, 3 corners, 3)
            lmk = (tri * self.lmk_bary[None, :, :, None]).sum(dim=2)
        return verts, lmk



def project_orthographic(points, cam):
    """DECA's camera: ``xy = s * (X[:, :2] + t)`` with cam = [s, tx, ty]; y points down in images."""
    xy = cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:3])
    return xy * xy.new_tensor([1.0, -1.0])
