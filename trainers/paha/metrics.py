"""Metrics of trainer 2, each computed as its reference code computes it. Video arrays are
(T, H, W, 3) uint8 RGB unless said otherwise; ``device`` is where the networks run.

| metric | reference (repository: file, function) | input | weights |
|---|---|---|---|
| PSNR, SSIM | scikit-image ``structural_similarity`` | frames | — |
| LPIPS | richzhang/PerceptualSimilarity (the ``lpips`` wheel) | frames in [−1, 1] | torchvision ``alexnet-owt-7be5be79.pth`` |
| FID | mseitzer/pytorch-fid: ``fid_score.py`` ``calculate_frechet_distance`` (+ ``calculate_activation_statistics``) | every frame, 2048-d pool3 | ``pt_inception-2015-12-05-6726825d.pth`` |
| FVD | universome/stylegan-v: ``src/metrics/frechet_video_distance.py`` ``compute_fvd`` + ``metric_utils.FeatureStats`` | one 16-frame clip per video (real: at a random offset; generated: from frame 0), 400-d I3D features | ``i3d_torchscript.pt`` |
| Sync-C/D (LSE-C/D), offset | joonson/syncnet_python: ``SyncNetInstance.py`` ``evaluate`` / ``calc_pdist``, ``run_pipeline.py`` ``crop_video`` | crops of the scored video's own face track (``face_boxes``: BlazeFace where syncnet_python runs S3FD) + 16 kHz audio | ``syncnet_v2.model`` |
| HKC, HKV | CyberHost (arXiv 2409.01876) — no code released, no formula found; see ``hand_keypoints`` | frames | MediaPipe (in its wheel) |
| mouth opening (conditioning) | ``geometry.landmarks.mouth_opening`` on MediaPipe FaceMesh; see ``mouth_series`` | frames | MediaPipe (in its wheel) |

Fréchet distances refuse sample counts at or under the feature dimension (a covariance of N
samples has rank ≤ N − 1, so its square root is not the Gaussian's; pytorch-fid's README sends
sets of fewer than 2048 images to a lower feature layer) unless ``allow_few_samples=True``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geometry.landmarks import POSE_HAND_LANDMARKS

FID_DIMS = 2048  # pytorch-fid's default block: pool3 of the FID Inception
I3D_DIMS = 400  # StyleGAN-V's I3D with return_features=True: the logits layer before the softmax
FVD_FRAMES = 16  # StyleGAN-V's fvd2048_16f: 16 consecutive frames per video


def need_weights(path: str | None, what: str) -> Path:
    """The weights file of metric ``what``: a ValueError when not given, FileNotFoundError when absent."""
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
    """Peak signal-to-noise ratio over all pixels of two uint8 videos, dB (inf when equal)."""
    mse = np.mean((pred.astype(np.float64) - ref.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean over frames of scikit-image's SSIM (RGB, data range 255)."""
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(p, r, channel_axis=-1, data_range=255) for p, r in zip(pred, ref)]))


#: MediaPipe Pose landmarks of each hand (wrist, pinky, index and thumb knuckles), subject's side
POSE_HAND_KEYPOINTS = {"left": POSE_HAND_LANDMARKS["left_hand"], "right": POSE_HAND_LANDMARKS["right_hand"]}


def hand_keypoints(video: np.ndarray) -> dict[str, Any]:
    """CyberHost's hand keypoint confidence (HKC) and variance (HKV) of one video, from MediaPipe.

    CyberHost (arXiv 2409.01876) reports HKC for the quality of generated hands and HKV for the
    richness of hand motion; it released no code and no formula for them was found, so they are
    read as later papers that reuse them describe them: HKC = the mean confidence of the detected hand keypoints, HKV = the
    variance over time of their positions.

    * **HKC** — deviation, said plainly: MediaPipe's 21-point hand landmarks carry no per-keypoint
      confidence (their ``visibility``/``presence`` are unset), and the hand's ``handedness`` score
      is a left/right classification, not a confidence. The per-keypoint confidences MediaPipe does
      give for hands are the Pose model's ``visibility`` of each hand's wrist, pinky, index and
      thumb landmarks (``POSE_HAND_KEYPOINTS``). So: for every frame and every hand the hand
      landmarker detected, the mean visibility of the four Pose hand keypoints of the nearer
      wrist; HKC = the mean over those (frame, hand) pairs, in [0, 1]. ``None`` — undefined, not 0 —
      when no hand was detected together with a body in any frame.
    * **HKV** — the variance over time of each of the 21 hand landmarks' pixel positions (x and y
      variances summed), averaged over landmarks, then over the hands seen in at least two frames;
      px² of this video's frames. ``None`` when no hand was seen in two frames.

    Also returned: ``hand_frames`` (frames with at least one detected hand)."""
    from geometry.landmarks import LandmarkModels, analyse_frame

    models = LandmarkModels()
    confidences: list[float] = []
    points: dict[str, list[np.ndarray]] = {"left_hand": [], "right_hand": []}
    hand_frames = 0
    for frame in video:
        a = analyse_frame(models, frame)
        wh = np.array(frame.shape[1::-1], np.float64)
        body, visibility = a["body"], a["body_visibility"]
        seen = False
        for side, track in points.items():
            hand = a[side]
            if np.isnan(hand[0, 0]):
                continue
            seen = True
            track.append(hand[:, :2] * wh)
            if np.isnan(body[0, 0]):
                continue  # no body: MediaPipe gives this hand no keypoint confidence
            # the Pose hand whose wrist is nearer the hand landmarker's wrist (landmark 0): no reliance
            # on the handedness label, which flips on mirrored or ambiguous hands
            near = min(POSE_HAND_KEYPOINTS.values(), key=lambda kp: np.linalg.norm((body[kp[0], :2] - hand[0, :2]) * wh))
            confidences.append(float(np.mean(visibility[list(near)])))
        hand_frames += seen
    variances = [np.var(np.stack(p), axis=0).sum(-1).mean() for p in points.values() if len(p) > 1]
    return {"hkc": float(np.mean(confidences)) if confidences else None,
            "hkv": float(np.mean(variances)) if variances else None, "hand_frames": hand_frames}


# --- mouth opening (the audio-conditioning measure) ------------------------------------------
#: frames with a shorter side are upscaled (bicubic) to this before meshing: see ``mouth_series``
MOUTH_MIN_SIDE = 256


NOSE_TIP = 1  # FaceMesh landmark: inside any face detection box of the same face


def _inside(point: np.ndarray, box, margin: float = 0.1) -> bool:
    """Whether ``point`` ([0, 1] image coordinates) lies in a relative bounding box widened by ``margin`` of its size."""
    mx, my = margin * box.width, margin * box.height
    return (box.xmin - mx <= point[0] <= box.xmin + box.width + mx) and (box.ymin - my <= point[1] <= box.ymin + box.height + my)


def _mesh_points(found) -> np.ndarray:
    """(478, 2) FaceMesh landmarks of the first face found, in [0, 1] image coordinates."""
    return np.array([[p.x, p.y] for p in found[0].landmark], np.float64)


def mouth_series(video: np.ndarray, min_side: int = MOUTH_MIN_SIDE) -> np.ndarray:
    """(T,) mouth opening of the face in each frame of ``video`` (T, H, W, 3) uint8 RGB, NaN where
    MediaPipe finds no face: ``geometry.landmarks.mouth_opening`` (inner-lip gap over the outer
    eye-corner distance, so head size and zoom cancel) of the 478-point FaceMesh.

    FaceMesh runs as the pose stage's ``LandmarkModels.mesh`` (video mode: it tracks the face from
    frame to frame; refined landmarks; confidence 0.5), one graph per video so no tracking state
    crosses clips. A frame counts only where BlazeFace full range (``LandmarkModels.faces``) also
    detects a face around the mesh's nose tip: FaceMesh's own short-range detector, and its tracker
    once locked, take a drawn disc with a mouth bar for a face (the ``tiny`` preset's synthetic
    frames: meshed in most frames, counted in 1 of 128), while real faces count in 87–100 % of the
    frames (tests/test_paha_conditioning.py's talking photos at 64–480 px, the fewest for a face
    that fills a 64-px frame). Where FaceMesh meshes nothing but full range detects a face (a face under
    ~15 % of the frame, beyond the short-range detector), the face is meshed as the pose stage
    meshes small faces: a square crop of twice the detection box, upscaled to ``min_side``, static mode.

    Frames whose shorter side is under ``min_side`` px are first upscaled (bicubic): MediaPipe
    samples the face's region into the landmark network's 192² input bilinearly, which from a face
    a few dozen pixels wide gives blocky lip edges. Measured on the talking astronaut (an upper
    body) scaled down to 128 px, the correlation of this series with the audio envelope of three
    real utterances rose from 0.62–0.78 to 0.75–0.86 with the upscale; on a portrait whose face
    fills the frame it changed by ≤ 0.02. It adds no detail: a generated face too small to show
    its lips stays unmeasurable."""
    import cv2
    import mediapipe as mp

    from geometry.landmarks import mouth_opening

    out = np.full(len(video), np.nan, np.float32)
    s = mp.solutions
    with s.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                              min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh, \
            s.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                 min_detection_confidence=0.5) as crop_mesh, \
            s.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as detector:
        for t, frame in enumerate(video):
            frame = np.ascontiguousarray(frame)
            h, w = frame.shape[:2]
            if min(h, w) < min_side:
                scale = min_side / min(h, w)
                frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
                h, w = frame.shape[:2]
            found = mesh.process(frame).multi_face_landmarks  # every frame, so the tracker sees the whole clip
            detections = sorted(detector.process(frame).detections or [], key=lambda d: -d.score[0])
            boxes = [d.location_data.relative_bounding_box for d in detections]
            if not boxes:
                continue
            if found:
                points = _mesh_points(found)
                nose = points[NOSE_TIP]
                if any(_inside(nose, b) for b in boxes):
                    out[t] = mouth_opening(points, w, h)
                continue
            b = boxes[0]  # the most confident detection
            cx, cy = (b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h
            half = max(b.width * w, b.height * h)
            x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
            x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
            if x1 - x0 < 16 or y1 - y0 < 16:
                continue
            crop = cv2.resize(frame[y0:y1, x0:x1], (min_side, min_side), interpolation=cv2.INTER_CUBIC)
            found = crop_mesh.process(crop).multi_face_landmarks
            if found:
                # in the frame's pixels (the crop is not square at the frame's edges); the offset cancels in the ratio
                out[t] = mouth_opening(_mesh_points(found), x1 - x0, y1 - y0)
    return out


def face_boxes(video: np.ndarray, min_side: int = MOUTH_MIN_SIDE) -> np.ndarray:
    """(T, 4) [x0, y0, x1, y1] pixel box of the most confident face BlazeFace (full range, confidence
    0.5) detects in each frame of ``video`` (T, H, W, 3) uint8 RGB; NaN where it finds none. The
    scored video's own face track for Sync-C/D: syncnet_python's ``run_pipeline.py`` detects the faces
    (S3FD) in the very video it scores, so a generated face that moves elsewhere than the real one is
    cropped where it is. Frames under ``min_side`` px are upscaled first, as in ``mouth_series``."""
    import cv2
    import mediapipe as mp

    out = np.full((len(video), 4), np.nan, np.float32)
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as detector:
        for t, frame in enumerate(video):
            h, w = frame.shape[:2]
            big = np.ascontiguousarray(frame)
            if min(h, w) < min_side:
                scale = min_side / min(h, w)
                big = cv2.resize(big, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
            found = sorted(detector.process(big).detections or [], key=lambda d: -d.score[0])
            if found:
                b = found[0].location_data.relative_bounding_box
                out[t] = [max(b.xmin, 0) * w, max(b.ymin, 0) * h, min(b.xmin + b.width, 1) * w, min(b.ymin + b.height, 1) * h]
    return out


# --- Fréchet distances -----------------------------------------------------------------------
def check_sample_count(n: int, dims: int, what: str, allow_few_samples: bool = False) -> bool:
    """Whether ``n`` samples of ``dims``-dimensional features give a full-rank covariance
    (``n > dims``); a ValueError naming both when not, unless ``allow_few_samples``."""
    if n > dims:
        return True
    if not allow_few_samples:
        raise ValueError(f"{what}: {n} samples of {dims}-dimensional features: their covariance has rank at most "
                         f"{max(n - 1, 0)} < {dims}, so the distance is not the Gaussians'; give more than {dims} "
                         "samples, or allow_few_samples=True (--allow-few-samples) for a value flagged unreliable")
    return False


def frechet_distance(a: np.ndarray, b: np.ndarray, allow_few_samples: bool = False, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D), as pytorch-fid computes
    FID: statistics as ``calculate_activation_statistics`` (``np.mean``, ``np.cov(rowvar=False)``),
    distance by ``fid_score.calculate_frechet_distance`` itself (its ``eps`` on the diagonal when
    the product is singular). Refuses ``N ≤ D`` (``check_sample_count``)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    check_sample_count(min(len(a), len(b)), a.shape[1], "Fréchet distance", allow_few_samples)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(calculate_frechet_distance(a.mean(0), s1, b.mean(0), s2, eps=eps))


def fvd_distance(generated: np.ndarray, real: np.ndarray, allow_few_samples: bool = False) -> float:
    """FVD from I3D features (N, D) as StyleGAN-V computes it: ``FeatureStats.get_mean_cov`` (mean and
    the biased covariance E[xxᵀ] − μμᵀ, float64) and ``compute_fvd``'s
    ``real(‖μ_g − μ_r‖² + tr(Σ_g + Σ_r − 2·sqrtm(Σ_g Σ_r)))`` — no ε regularisation there.
    Refuses ``N ≤ D`` (``check_sample_count``)."""
    import scipy.linalg

    check_sample_count(min(len(generated), len(real)), np.shape(generated)[1], "FVD", allow_few_samples)

    def mean_cov(x):
        x = np.asarray(x, np.float64)
        mean = x.sum(0) / len(x)
        return mean, x.T @ x / len(x) - np.outer(mean, mean)

    mu_g, sigma_g = mean_cov(generated)
    mu_r, sigma_r = mean_cov(real)
    m = np.square(mu_g - mu_r).sum()
    s, _ = scipy.linalg.sqrtm(np.dot(sigma_g, sigma_r), disp=False)
    return float(np.real(m + np.trace(sigma_g + sigma_r - s * 2)))


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


def fid_inception(weights: str | None, device: str = "cpu") -> torch.nn.Module:
    """The FID Inception with the weights file ``weights`` (pt_inception-2015-12-05-6726825d.pth)."""
    path = need_weights(weights, "FID")
    net = fid_inception_architecture()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval()


@torch.no_grad()
def inception_features(net: torch.nn.Module, frames: torch.Tensor, batch: int = 32) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] → (N, 2048) pool3 features, as pytorch-fid's ``InceptionV3`` with
    ``resize_input`` and ``normalize_input``: bilinear to 299² (align_corners False), scaled to [−1, 1]."""
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(frames), batch):
        x = F.interpolate(frames[i: i + batch].to(device), size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(net, name)(x)
        out.append(x.flatten(1).cpu().numpy())
    return np.concatenate(out)


def fid(generated: list[np.ndarray], real: list[np.ndarray], weights: str | None, allow_few_samples: bool = False,
        device: str = "cpu") -> float:
    """FID between every frame of the generated and of the real videos (pytorch-fid's statistics
    and distance, ``frechet_distance``); refuses ≤ 2048 frames per set unless ``allow_few_samples``."""
    path = str(need_weights(weights, "FID"))
    check_sample_count(min(sum(map(len, generated)), sum(map(len, real))), FID_DIMS, "FID", allow_few_samples)
    net = fid_inception(path, device)
    g = inception_features(net, torch.cat([_float(v) for v in generated]))
    r = inception_features(net, torch.cat([_float(v) for v in real]))
    return frechet_distance(g, r, allow_few_samples=allow_few_samples)


def fvd_clips(videos: list[np.ndarray], clip_frames: int = FVD_FRAMES, random_offset: bool = False,
              seed: int = 0) -> list[np.ndarray]:
    """One ``clip_frames`` clip per video, videos shorter than that left out (StyleGAN-V's
    ``discard_short_videos``). ``random_offset``: the clip starts at a random frame, as StyleGAN-V
    loads real videos (``load_n_consecutive_random_offset`` defaults to True in its video dataset;
    ``compute_fvd`` turns it off only for generated videos, which start at frame 0). The draw is
    seeded so a report can be reproduced."""
    rng = np.random.default_rng(seed)
    out = []
    for v in videos:
        if len(v) < clip_frames:
            continue
        start = int(rng.integers(0, len(v) - clip_frames + 1)) if random_offset else 0
        out.append(v[start: start + clip_frames])
    return out


@torch.no_grad()
def fvd(generated: list[np.ndarray], real: list[np.ndarray], weights: str | None, clip_frames: int = FVD_FRAMES,
        allow_few_samples: bool = False, device: str = "cpu", batch: int = 8, seed: int = 0) -> float:
    """FVD as StyleGAN-V's ``compute_fvd``: the TorchScript I3D called with its ``detector_kwargs``
    ``rescale=True, resize=True, return_features=True`` on (B, 3, T, H, W) videos of 0–255 values
    (the detector rescales to [−1, 1] and resizes to 224² itself), one ``clip_frames`` clip per
    video — the generated ones from their first frame, the real ones from a random offset (seeded by
    ``seed``), as ``compute_fvd`` takes them — then ``fvd_distance``. Refuses ≤ 400 clips per set
    unless ``allow_few_samples``."""
    path = str(need_weights(weights, "FVD"))
    g_clips, r_clips = fvd_clips(generated, clip_frames), fvd_clips(real, clip_frames, random_offset=True, seed=seed)
    check_sample_count(min(len(g_clips), len(r_clips)), I3D_DIMS, "FVD", allow_few_samples)
    det = torch.jit.load(path, map_location=device).eval()

    def feats(clips: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(clips), batch):
            # (B, T, H, W, 3) uint8 → (B, 3, T, H, W); float (0–255) rather than uint8 so any detector
            # built with float layers accepts it — with rescale=True the values are what matters
            x = torch.from_numpy(np.stack(clips[i: i + batch])).permute(0, 4, 1, 2, 3).float().to(device)
            out.append(det(x, rescale=True, resize=True, return_features=True).cpu().numpy())
        return np.concatenate(out)

    return fvd_distance(feats(g_clips), feats(r_clips), allow_few_samples=allow_few_samples)


# --- LPIPS -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def lpips_model(backbone: str | None, device: str = "cpu"):
    """LPIPS (AlexNet) with its linear heads from the lpips wheel and the AlexNet features from
    ``backbone`` (torchvision's alexnet state dict); built once per path (eval calls it per clip)."""
    import lpips

    state = torch.load(need_weights(backbone, "LPIPS"), map_location="cpu", weights_only=True)
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
    return model.to(device).eval()


@torch.no_grad()
def lpips_distance(pred: np.ndarray, ref: np.ndarray, backbone: str | None, device: str = "cpu") -> float:
    """Mean LPIPS over frames, inputs scaled to [−1, 1] as the lpips package expects."""
    model = lpips_model(backbone, device)
    return float(model(_float(pred).to(device) * 2 - 1, _float(ref).to(device) * 2 - 1).mean())


# --- Sync-C / Sync-D (LSE-C / LSE-D) ---------------------------------------------------------
SYNC_FPS, SYNC_SR = 25, 16000  # SyncNet: 25 fps video, 16 kHz audio (640 samples a frame)
SYNC_MEDFILT = 13  # crop_video's median filter over the track's box centres and sizes


def sync_from_features(lip: np.ndarray, audio: np.ndarray, vshift: int = 15) -> dict[str, Any]:
    """Sync-D, Sync-C and the AV offset from SyncNet lip features (L, D) and audio features (L, D),
    as syncnet_python's ``evaluate``: ``calc_pdist`` (each lip feature against the audio features
    ±``vshift`` frames away, zero rows past the ends), mean over frames per offset → ``mdist``;
    Sync-D (LSE-D) = min, Sync-C (LSE-C) = median − min, offset = vshift − argmin (> 0: the audio
    leads). The search is ``geometry.syncnet.score``, the ingest sync stage's own."""
    from geometry.syncnet import score

    mdist = torch.from_numpy(np.asarray(score(lip, audio, "syncnet", vshift).curve, np.float32))
    minval, minidx = torch.min(mdist, 0)
    # torch.median as evaluate does (the lower middle value on even lengths; 2·vshift+1 is odd)
    return {"sync_d": float(minval), "sync_c": float(torch.median(mdist) - minval), "sync_offset": int(vshift - minidx),
            "mdist": mdist.numpy()}


def face_track(boxes: np.ndarray, kernel: int = SYNC_MEDFILT) -> tuple[int, np.ndarray] | None:
    """The face track of a clip as syncnet_python's ``run_pipeline.py`` builds and smooths it:
    ``boxes`` (T, 4) [x0, y0, x1, y1] per frame (NaN where no face); the track runs from the first
    to the last frame with a box, missing boxes linearly interpolated (``track_shot``'s interp1d);
    then each frame's half-size ``max(w, h)/2`` and centre are median-filtered over ``kernel``
    frames (``crop_video``'s ``signal.medfilt``). Returns (first frame, (n, 4) smoothed boxes
    centre ± half-size), or None without any box.

    ``medfilt`` pads with zeros, so a kernel longer than the track would pull the boxes towards 0
    (syncnet_python never filters tracks under ``min_track`` = 100 frames): a track shorter than
    ``kernel`` is filtered with the largest odd kernel that fits it."""
    from scipy import signal

    boxes = np.asarray(boxes, np.float64)
    have = np.flatnonzero(~np.isnan(boxes).any(axis=1))
    if not len(have):
        return None
    frames = np.arange(have[0], have[-1] + 1)
    track = np.stack([np.interp(frames, have, boxes[have, i]) for i in range(4)], 1)
    kernel = min(kernel, len(frames) - (1 - len(frames) % 2))
    s = signal.medfilt(np.maximum(track[:, 3] - track[:, 1], track[:, 2] - track[:, 0]) / 2, kernel_size=kernel)
    x = signal.medfilt((track[:, 0] + track[:, 2]) / 2, kernel_size=kernel)
    y = signal.medfilt((track[:, 1] + track[:, 3]) / 2, kernel_size=kernel)
    return int(have[0]), np.stack([x - s, y - s, x + s, y + s], 1)


@functools.lru_cache(maxsize=2)
def _syncnet(weights: str, device: str):
    from geometry.syncnet import SyncNetModel

    return SyncNetModel(weights, device)


def sync_scores(video: np.ndarray, face_boxes: np.ndarray, wave: np.ndarray, weights: str | None, vshift: int = 15,
                device: str = "cpu", batch_size: int = 20) -> dict[str, Any] | None:
    """Sync-C / Sync-D / offset of one video at 25 fps with its 16 kHz ``wave`` (float in [−1, 1]),
    as syncnet_python scores a face track: ``face_track`` of ``face_boxes`` (T, 4; NaN = no face),
    each frame's ``geometry.syncnet.syncnet_crop`` (224², BGR, crop_scale 0.4), the audio cut to the
    track's frames and read as 16-bit integers (``evaluate`` reads a PCM-16 wav: MFCCs of ints),
    SyncNet ``syncnet_v2.model`` through ``geometry.syncnet.SyncNetModel`` (the ingest's loader), windows
    0 … min_length − 6 as ``evaluate`` takes them, then ``sync_from_features``. None when the track
    has fewer than 6 frames (no 5-frame window left)."""
    from geometry.syncnet import syncnet_crop

    net = _syncnet(str(need_weights(weights, "Sync-C/Sync-D")), device)
    track = face_track(face_boxes)
    if track is None:
        return None
    first, boxes = track
    if len(boxes) < 6:
        return None
    frames = video[first: first + len(boxes)]
    crops = np.stack([syncnet_crop(np.ascontiguousarray(f[..., ::-1]), b) for f, b in zip(frames, boxes)])
    per_frame = SYNC_SR // SYNC_FPS
    pcm = np.asarray(wave)[first * per_frame: (first + len(boxes)) * per_frame]  # SyncNet.audio_features makes it PCM-16
    min_length = min(len(crops), len(pcm) // per_frame)
    last = min_length - 5  # evaluate's lastframe: windows 0 … min_length - 6
    if last < 1:
        return None
    lip = net.lip_features(crops[:min_length], batch_size)[:last]
    aud = net.audio_features(pcm, last, batch_size)
    out = sync_from_features(lip, aud, vshift)
    out["frames"] = min_length
    return out
