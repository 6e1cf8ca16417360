"""Metrics of trainer 2. Video arrays are (T, H, W, 3) uint8 RGB unless said otherwise.

Weight-free: PSNR, SSIM (scikit-image), hand keypoint confidence/variance (MediaPipe, whose models
ship in its wheel). With weights supplied by path (never downloaded; a clear error when missing):

| metric | weights | format |
|---|---|---|
| FID | ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's FID Inception) | state dict |
| FVD | ``i3d_torchscript.pt`` (StyleGAN-V / fvd-comparison) | TorchScript, ``detector(x, rescale=False, resize=False, return_features=True)`` on (B, 3, T, 224, 224) in [-1, 1] |
| LPIPS | torchvision AlexNet ``alexnet-owt-7be5be79.pth`` (LPIPS's own linear heads ship in the lpips wheel) | state dict |
| Sync-C / Sync-D | SyncNet (syncnet_python) exported to TorchScript | ``forward_lip(x)`` on (B, 3, 5, 224, 224) BGR 0–255 mouth crops, ``forward_aud(m)`` on (B, 1, 13, 20) python_speech_features MFCCs |
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _need(path: str | None, what: str) -> Path:
    if not path:
        raise ValueError(f"{what}: weights not given (see docs/paha.md, 'Metrics')")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: weights file not found: {p}")
    return p


def _float(video: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float() / 255.0


# --- weight-free -----------------------------------------------------------------------------
def psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    mse = np.mean((pred.astype(np.float64) - ref.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(pred: np.ndarray, ref: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(p, r, channel_axis=-1, data_range=255) for p, r in zip(pred, ref)]))


def hand_keypoints(video: np.ndarray) -> dict[str, float | None]:
    """Hand keypoint confidence (HKC: mean MediaPipe hand score over frames and both hands, 0 when
    a hand is not found) and variance (HKV: variance over time of the detected hand keypoints'
    positions, in pixels², averaged over keypoints; None — undefined, not 0 — when no hand was seen
    in two frames) — CyberHost's hand metrics."""
    from geometry.landmarks import LandmarkModels, analyse_frame

    models = LandmarkModels()
    scores, points = [], {"left_hand": [], "right_hand": []}
    for frame in video:
        a = analyse_frame(models, frame)
        scores.append([a["left_hand_score"], a["right_hand_score"]])
        for side in points:
            if not np.isnan(a[side][0, 0]):
                points[side].append(a[side][:, :2] * np.array(frame.shape[1::-1]))
    var = [np.var(np.stack(p), axis=0).sum(-1).mean() for p in points.values() if len(p) > 1]
    return {"hkc": float(np.mean(scores)), "hkv": float(np.mean(var)) if var else None}


# --- Fréchet distances -----------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D)."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():  # near-singular: regularise as pytorch-fid does
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_inception_architecture() -> torch.nn.Module:
    """pytorch-fid's FID Inception-v3 (``pytorch_fid.inception.fid_inception_v3``'s layers), without
    weights — assembled here because pytorch-fid's own builder downloads them."""
    from pytorch_fid import inception as pi

    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = pi.FIDInceptionA(192, 32), pi.FIDInceptionA(256, 64), pi.FIDInceptionA(288, 64)
    net.Mixed_6b = pi.FIDInceptionC(768, 128)
    net.Mixed_6c, net.Mixed_6d = pi.FIDInceptionC(768, 160), pi.FIDInceptionC(768, 160)
    net.Mixed_6e = pi.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = pi.FIDInceptionE_1(1280), pi.FIDInceptionE_2(2048)
    return net


def fid_inception(weights: str | None) -> torch.nn.Module:
    """The FID Inception with the weights file ``weights`` (pt_inception-2015-12-05-6726825d.pth)."""
    path = _need(weights, "FID")
    net = fid_inception_architecture()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


@torch.no_grad()
def inception_features(net: torch.nn.Module, frames: torch.Tensor, batch: int = 32) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] → (N, 2048) pool features (299², inputs scaled to [-1, 1])."""
    out = []
    for i in range(0, len(frames), batch):
        x = F.interpolate(frames[i: i + batch], size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(net, name)(x)
        out.append(x.flatten(1).numpy())
    return np.concatenate(out)


def fid(generated: list[np.ndarray], real: list[np.ndarray], weights: str | None) -> float:
    net = fid_inception(weights)
    g = inception_features(net, torch.cat([_float(v) for v in generated]))
    r = inception_features(net, torch.cat([_float(v) for v in real]))
    return frechet_distance(g, r)


def fvd(generated: list[np.ndarray], real: list[np.ndarray], weights: str | None, clip_frames: int = 16) -> float:
    """FVD over clips of ``clip_frames`` frames (every video contributes its non-overlapping clips)."""
    det = torch.jit.load(str(_need(weights, "FVD")), map_location="cpu").eval()

    def feats(videos):
        clips = []
        for v in videos:
            x = _float(v)
            for s in range(0, len(x) - clip_frames + 1, clip_frames):
                c = F.interpolate(x[s: s + clip_frames], size=(224, 224), mode="bilinear", align_corners=False)
                clips.append(c.permute(1, 0, 2, 3) * 2 - 1)  # (3, T, 224, 224) in [-1, 1]
        if len(clips) < 2:
            raise ValueError(f"FVD needs at least two {clip_frames}-frame clips per set")
        with torch.no_grad():
            return torch.cat([det(c[None], rescale=False, resize=False, return_features=True) for c in clips]).numpy()

    return frechet_distance(feats(generated), feats(real))


# --- LPIPS -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def lpips_model(backbone: str | None):
    """LPIPS (AlexNet) with its linear heads from the lpips wheel and the AlexNet features from
    ``backbone`` (torchvision's alexnet state dict); built once per path (eval calls it per clip)."""
    import lpips

    state = torch.load(_need(backbone, "LPIPS"), map_location="cpu", weights_only=True)
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    own = model.net.state_dict()  # keys slice<k>.<index>.weight, index as in alexnet.features
    mapped = {}
    for k in own:
        index, param = k.split(".", 1)[1].split(".", 1)
        src = f"features.{index}.{param}"
        if src not in state:
            raise ValueError(f"LPIPS backbone {backbone}: no {src} (expected torchvision's AlexNet state dict)")
        mapped[k] = state[src]
    model.net.load_state_dict(mapped)
    return model.eval()


@torch.no_grad()
def lpips_distance(pred: np.ndarray, ref: np.ndarray, backbone: str | None) -> float:
    model = lpips_model(backbone)
    return float(model(_float(pred) * 2 - 1, _float(ref) * 2 - 1).mean())


# --- Sync-C / Sync-D -------------------------------------------------------------------------
def mfcc(wave: np.ndarray, sample_rate: int = 16000) -> torch.Tensor:
    """SyncNet's audio input: python_speech_features' 13 MFCCs every 10 ms, (13, N)."""
    import python_speech_features

    return torch.from_numpy(python_speech_features.mfcc(wave.astype(np.float64), sample_rate).T.astype(np.float32))


@functools.lru_cache(maxsize=2)
def _syncnet(weights: str | None):
    return torch.jit.load(str(_need(weights, "Sync-C/Sync-D")), map_location="cpu").eval()


@torch.no_grad()
def sync_scores(mouth_frames: np.ndarray, wave: np.ndarray, weights: str | None, max_offset: int = 15) -> dict[str, float]:
    """Sync-D (smallest mean feature distance over audio offsets of ±max_offset frames) and Sync-C
    (median minus smallest distance), SyncNet's evaluation protocol, for mouth crops (T, H, W, 3)
    at 25 fps and 16 kHz audio."""
    net = _syncnet(weights)  # loaded once per weights file, not once per clip
    # syncnet_python feeds cv2-read frames: BGR, 0-255
    bgr = torch.from_numpy(np.ascontiguousarray(mouth_frames[..., ::-1])).permute(0, 3, 1, 2).float()
    x = F.interpolate(bgr, size=(224, 224), mode="bilinear", align_corners=False)  # (T, 3, 224, 224)
    T = len(x) - 4
    if T < 1:
        raise ValueError("Sync-C/Sync-D need at least 5 frames")
    lip = torch.cat([net.forward_lip(x[i: i + 5].permute(1, 0, 2, 3)[None]) for i in range(T)])
    m = mfcc(wave)
    need = 4 * (T - 1) + 20
    if m.shape[1] < need:
        m = F.pad(m, (0, need - m.shape[1]))
    aud = torch.cat([net.forward_aud(m[None, None, :, 4 * i: 4 * i + 20]) for i in range(T)])
    dists = []
    for off in range(-max_offset, max_offset + 1):
        idx = torch.arange(T) + off
        ok = (idx >= 0) & (idx < T)
        dists.append(F.pairwise_distance(lip[ok], aud[idx[ok]]).mean().item() if ok.any() else float("inf"))
    d = np.array(dists)
    finite = d[np.isfinite(d)]
    return {"sync_d": float(finite.min()), "sync_c": float(np.median(finite) - finite.min()),
            "av_offset": int(np.argmin(d) - max_offset)}
