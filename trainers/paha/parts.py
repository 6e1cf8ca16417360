"""Parts-aware pieces of PAHA: PAR loss re-weighting and PCE regional audio-visual classifiers.

Part order is the pose stage's (``schemas.pose.PART_NAMES``): face, mouth, left_hand, right_hand,
torso. Masks come from the loader's ``paha`` view (part boxes per frame), confidences from the
pose stage's part confidences.

**PAR** (parts-aware re-weighting). The per-pixel diffusion loss is multiplied by

    w(x, f) = 1 + Σ_p λ_p · c_p(f) · m_p(x, f)

with c_p(f) ∈ [0, 1] the confidence of part p in frame f, m_p(x, f) ∈ [0, 1] the share of latent
pixel x covered by part p's box in frame f (area-downsampled mask) and λ_p ≥ 0 per part
(``model.par_lambdas``; defaults face 1, mouth 2, hands 2, torso 0). Outside every part w = 1;
a part seen with confidence 0 adds nothing — uncertain poses are not emphasised, so the model is
not pushed hard towards wrong hands. The loss is the plain mean of w·(prediction − target)², not renormalised,
so pixels outside the parts keep exactly the weight of the unweighted loss.

**PCE** (parts-consistency enhancement). One small classifier per region (``mouth``: the mouth
box; ``hands``: the union of both hands' boxes) sees the *noisy* latents cropped to the region
(RoIAlign over the region's box, the union over the window), the timestep and the audio features
of the window, and tells synchronised audio from audio shifted in time or taken from another clip.
At sampling its gradient guides generation (see ``sampling.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.data import masks_from_boxes
from trainers.schedule import timestep_embedding

PARTS = ("face", "mouth", "left_hand", "right_hand", "torso")
REGIONS: dict[str, tuple[int, ...]] = {"mouth": (1,), "hands": (2, 3)}


# --- PAR ---------------------------------------------------------------------------------------
def downsample_masks(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, T, P, S, S) part masks → (B, T, P, h, w) coverage shares (area interpolation)."""
    B, T, P, S, S2 = masks.shape
    return F.adaptive_avg_pool2d(masks.reshape(B * T * P, 1, S, S2).float(), (h, w)).reshape(B, T, P, h, w)


def par_weights(masks: torch.Tensor, confidences: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """(B, T, P, h, w) masks, (B, T, P) confidences, (P,) λ → (B, T, 1, h, w) loss weights."""
    extra = (lambdas.view(1, 1, -1, 1, 1) * confidences.clamp(0, 1)[..., None, None] * masks).sum(dim=2, keepdim=True)
    return 1 + extra


def par_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    err = (pred - target) ** 2
    return (err if weights is None else err * weights).mean()


# --- where the audio acts --------------------------------------------------------------------
# ``model.audio_region``: the parts whose pixels UniVDM's audio cross-attention may change (Hallo's
# masked audio attention). "lower_face" is the face box's lower half (mouth, jaw, cheeks) united with
# the mouth box; anything else is one of ``PARTS``.
AUDIO_REGIONS: dict[str, tuple[str, ...]] = {
    "frame": (),
    "face": ("face", "mouth"),
    "mouth": ("lower_face",),
    "mouth+hands": ("lower_face", "left_hand", "right_hand"),
    "face+hands": ("face", "mouth", "left_hand", "right_hand"),
}


def audio_region_mask(part_boxes: torch.Tensor, size: int, region: str, margin: float) -> torch.Tensor | None:
    """(B, P, 4) or (B, T, P, 4) part boxes in view pixels (NaN = absent; over a window, each part the
    box its boxes span) → (B, 1, size, size) mask of ``region`` grown by ``margin`` × size on every
    side, or None for ``frame`` (audio everywhere). A sample with none of the region's parts gets the
    whole frame, so a missed face never silences the audio."""
    if region not in AUDIO_REGIONS:
        raise ValueError(f"unknown audio region {region!r}; known: {list(AUDIO_REGIONS)}")
    if region == "frame":
        return None
    b = part_boxes.float()
    if b.dim() == 4:  # a window: the box each part spans over its frames
        b = torch.cat([torch.nan_to_num(b[..., :2], nan=float("inf")).amin(1),
                       torch.nan_to_num(b[..., 2:], nan=float("-inf")).amax(1)], dim=-1)
        b = torch.where(torch.isinf(b).any(-1, keepdim=True), torch.full_like(b, float("nan")), b)
    boxes = []
    for part in AUDIO_REGIONS[region]:
        if part == "lower_face":
            face = b[:, PARTS.index("face")]
            lower = torch.stack([face[:, 0], (face[:, 1] + face[:, 3]) / 2, face[:, 2], face[:, 3]], dim=-1)
            boxes += [lower, b[:, PARTS.index("mouth")]]
        else:
            boxes.append(b[:, PARTS.index(part)])
    grown = torch.stack(boxes, dim=1) + torch.tensor([-1.0, -1.0, 1.0, 1.0], device=b.device) * margin * size
    mask = masks_from_boxes(grown, size).amax(dim=1, keepdim=True)  # (B, 1, size, size)
    seen = ~torch.isnan(grown[..., 0]).all(dim=1)
    return torch.where(seen[:, None, None, None], mask, torch.ones_like(mask))


# --- PCE ---------------------------------------------------------------------------------------
def region_boxes(masks: torch.Tensor, region: str, min_size: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B, 4) [x0, y0, x1, y1] in mask pixels around the union of the region's parts over the
    window, and whether the region was seen at all (B,). Unseen regions get the whole frame."""
    m = masks[:, :, list(REGIONS[region])].amax(dim=(1, 2)) > 0  # (B, h, w)
    B, h, w = m.shape
    ys = torch.arange(h, device=m.device)[None, :, None].expand(B, h, w)
    xs = torch.arange(w, device=m.device)[None, None, :].expand(B, h, w)
    seen = m.flatten(1).any(dim=1)
    big = torch.tensor(10**6, device=m.device)
    x0 = torch.where(m, xs, big).flatten(1).amin(1).float()
    y0 = torch.where(m, ys, big).flatten(1).amin(1).float()
    x1 = torch.where(m, xs, -1).flatten(1).amax(1).float() + 1
    y1 = torch.where(m, ys, -1).flatten(1).amax(1).float() + 1
    boxes = torch.stack([x0, y0, torch.maximum(x1, x0 + min_size), torch.maximum(y1, y0 + min_size)], dim=1)
    whole = torch.tensor([0.0, 0.0, float(w), float(h)], device=m.device).expand(B, 4)
    return torch.where(seen[:, None], boxes, whole), seen


class RegionClassifier(nn.Module):
    """Noisy latent crops of one region (B, T, C, h, w) + timestep + audio (B, T, A) → sync logit (B,)."""

    def __init__(self, latent_channels: int, audio_dim: int, crop: int = 8, hidden: int = 64):
        super().__init__()
        self.crop, self.hidden = crop, hidden
        self.video = nn.Sequential(nn.Conv3d(latent_channels, hidden, (3, 3, 3), padding=1), nn.SiLU(),
                                   nn.Conv3d(hidden, hidden, (3, 3, 3), padding=1, stride=(1, 2, 2)), nn.SiLU())
        self.audio = nn.Sequential(nn.Linear(audio_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.joint = nn.Sequential(nn.Conv1d(2 * hidden, hidden, 3, padding=1), nn.SiLU(),
                                   nn.Conv1d(hidden, hidden, 3, padding=1), nn.SiLU())
        self.head = nn.Linear(hidden, 1)

    def crops(self, z: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign of every frame to (crop, crop) around the clip's region box (latent pixels)."""
        from torchvision.ops import roi_align

        B, T, C, h, w = z.shape
        idx = torch.arange(B * T, device=z.device, dtype=z.dtype)[:, None]
        rois = torch.cat([idx, boxes.to(z.dtype).repeat_interleave(T, dim=0)], dim=1)
        return roi_align(z.reshape(B * T, C, h, w), rois, (self.crop, self.crop), aligned=True).reshape(B, T, C, self.crop, self.crop)

    def forward(self, z_t: torch.Tensor, boxes: torch.Tensor, t: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        c = self.crops(z_t, boxes).transpose(1, 2)  # (B, C, T, crop, crop)
        v = self.video(c).mean(dim=(3, 4)).transpose(1, 2)  # (B, T, H)
        a = self.audio(audio)
        j = self.joint(torch.cat([v, a], dim=-1).transpose(1, 2)).mean(dim=2)  # (B, H)
        return self.head(j + self.time(timestep_embedding(t, self.hidden))).squeeze(-1)


def mismatched_audio(audio: torch.Tensor, generator: torch.Generator | None = None, min_shift: int = 3) -> torch.Tensor:
    """Negatives for PCE: each clip's audio shifted in time by ≥ ``min_shift`` frames (circularly
    within the window), or — for every other clip when the batch has several — another clip's audio."""
    B, T, _ = audio.shape
    out = torch.empty_like(audio)
    lo = max(1, min(min_shift, T // 2))  # a short window cannot be shifted further than half its length both ways
    shifts = torch.randint(lo, max(lo, T - lo) + 1, (B,), generator=generator).tolist()
    for i in range(B):
        out[i] = torch.roll(audio[i], shifts[i] % T, dims=0)
    if B > 1:
        swap = torch.arange(B)[::2]
        out[swap] = audio[(swap + 1) % B]
    return out


class PCE(nn.Module):
    """The regional classifiers, one per region of ``REGIONS``."""

    def __init__(self, latent_channels: int, audio_dim: int, crop: int = 8, hidden: int = 64,
                 regions: tuple[str, ...] = tuple(REGIONS)):
        super().__init__()
        unknown = set(regions) - set(REGIONS)
        if unknown:
            raise ValueError(f"unknown PCE region(s) {sorted(unknown)}; known: {list(REGIONS)}")
        self.regions = tuple(regions)
        self.classifiers = nn.ModuleDict({r: RegionClassifier(latent_channels, audio_dim, crop, hidden) for r in regions})

    def forward(self, region: str, z_t, boxes, t, audio) -> torch.Tensor:
        return self.classifiers[region](z_t, boxes, t, audio)
