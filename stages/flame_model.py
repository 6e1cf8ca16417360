"""The models of the FLAME stage in PyTorch: DECA's coarse encoder and the landmark-fitting
refinement (the FLAME layer itself is ``geometry.flame_layer``). 
Imported lazily by ``stages.flame`` (torch is heavy)."""

from __future__ import annotations

import os

import torch
from torch import nn

from geometry.flame import CODE_SIZES, WHERE_TO_GET
from geometry.flame_layer import project_orthographic

from .errors import StageError


def refine_with_landmarks(flame_layer, shape, exp, pose, cam, target_xy, steps: int = 200, lr: float = 0.02, reg: float = 1e-3):
    """Fit exp, pose and cam (shape fixed) so projected FLAME landmarks match ``target_xy`` (B,L,2)
    in DECA's normalised image coordinates, starting from the given (DECA) estimate. Returns
    (exp, pose, cam, final mean landmark error)."""
    exp, pose, cam = (p.detach().clone().requires_grad_(True) for p in (exp, pose, cam))
    start = [p.detach().clone() for p in (exp, pose)]
    opt = torch.optim.Adam([exp, pose, cam], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        _, lmk = flame_layer(shape, exp, pose)
        # squared error: smooth near the optimum (the mean distance makes Adam oscillate there)
        loss = ((project_orthographic(lmk, cam) - target_xy) ** 2).sum(dim=-1).mean() + reg * sum(((p - s) ** 2).mean() for p, s in zip((exp, pose), start))
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, lmk = flame_layer(shape, exp, pose)
        err = (project_orthographic(lmk, cam) - target_xy).norm(dim=-1).mean()
    return exp.detach(), pose.detach(), cam.detach(), float(err)


# ---------------------------------------------------------------------------------------------
# the DECA coarse encoder


def build_deca_encoder():
    """torchvision ResNet-50 without its classifier (``encoder``) → Linear(2048,1024) → ReLU →
    Linear(1024,236) (``layers``): the state-dict layout of ``E_flame`` in ``deca_model.tar``."""
    from torchvision.models import resnet50

    class DecaEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = resnet50(weights=None)
            del self.encoder.fc
            self.encoder.fc = nn.Identity()
            self.layers = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, sum(CODE_SIZES.values())))

        def forward(self, images):  # (B,3,224,224) RGB in [0,1], no mean/std (DECA's convention)
            return self.layers(self.encoder(images))

    return DecaEncoder()


def load_deca_encoder(path: str, device: str = "cpu"):
    """DECA's coarse encoder with the ``E_flame`` weights of ``deca_model.tar``, loaded strictly
    (DECA's own loader skips mismatched keys silently; here a wrong file is an error)."""
    if not os.path.isfile(path):
        raise StageError("missing_asset", f"DECA checkpoint not found: {path} ({WHERE_TO_GET['deca_checkpoint']})")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("E_flame", ckpt) if isinstance(ckpt, dict) else ckpt
    model = build_deca_encoder()
    state = {k: v for k, v in state.items() if not k.startswith("encoder.fc.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise StageError("bad_asset", f"{path}: E_flame does not match DECA's encoder: {str(e)[:300]}") from None
    return model.to(device).eval()
