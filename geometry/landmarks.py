"""MediaPipe landmarks of one frame and the body-part confidences and boxes derived from them.

Shared by the pose stage (every frame of a video) and the PAHA trainer (region boxes of a
reference image, hand keypoint metrics), so neither imports the other.

Part confidences (the inputs of PAHA's parts-aware re-weighting), per frame, each in [0, 1]; a
part not found is 0 with ``present = False``:

* ``face``      = BlazeFace (full-range) detection score of the tracked face.
* ``mouth``     = face × mean visibility of the pose's mouth corners (landmarks 9, 10).
* ``left_hand`` = mean visibility the Pose model gives the subject's left-hand landmarks (wrist,
                  pinky, index, thumb: pose 15, 17, 19, 21) in a frame where the hand landmarker
                  found that hand; ``right_hand`` likewise (pose 16, 18, 20, 22). The hand
                  landmarker's own 21 points carry no confidence (their visibility/presence are
                  unset) and its handedness score says left-or-right, not how reliably the hand
                  is seen, so it is not used. A hand found without a body pose has no confidence:
                  0, but it is present (its box is kept). MediaPipe labels hands as seen in a mirror; frames here are not
                  mirrored, so its "Right" is the subject's left hand.
* ``torso``     = mean visibility of the shoulders (pose 11, 12): the upper torso, which is what
                  a half-body news shot shows (hips are usually out of frame).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas import PART_NAMES

# Lip contour of the 478-point face mesh (MediaPipe FACEMESH_LIPS vertices).
LIPS = sorted({61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
               78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415})
#: The Pose model's landmarks of each hand (wrist, pinky, index, thumb): their visibility is the hand's confidence.
POSE_HAND_LANDMARKS = {"left_hand": (15, 17, 19, 21), "right_hand": (16, 18, 20, 22)}
BACKEND = "mediapipe-0.10.21:pose-full+hands-full+face-mesh-478+blazeface-full-range"


class LandmarkModels:
    """The four MediaPipe graphs, created once (video mode: they track between frames)."""

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5, max_faces: int = 1):
        import mediapipe as mp

        s = mp.solutions
        c = self.min_detection_confidence = min_detection_confidence
        self.min_tracking_confidence = min_tracking_confidence
        self.max_faces = max_faces
        self.pose = s.pose.Pose(static_image_mode=False, model_complexity=1, min_detection_confidence=c,
                                min_tracking_confidence=min_tracking_confidence)
        self.hands = s.hands.Hands(static_image_mode=False, max_num_hands=2, model_complexity=1, min_detection_confidence=c)
        self.mesh = s.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=max_faces, refine_landmarks=True, min_detection_confidence=c)
        # FaceMesh's own detector is short-range: faces under ~15 % of the frame (a two-anchor wide
        # shot) are found by the full-range detector and meshed on an upscaled crop by this one
        self.crop_mesh = s.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                              min_detection_confidence=c) if max_faces > 1 else None
        self.faces = NearFallbackDetector(s.face_detection.FaceDetection(model_selection=1, min_detection_confidence=c),
                                          s.face_detection.FaceDetection(model_selection=0, min_detection_confidence=c))

    def reset(self) -> None:
        """Forget tracking state (call between videos)."""
        LandmarkModels.__init__(self, self.min_detection_confidence, self.min_tracking_confidence, self.max_faces)


class NearFallbackDetector:
    """BlazeFace full range, and the short-range model where it finds nothing: the full-range
    model misses a face that fills the frame (a close-up, a VoxCeleb-style crop), which the
    short-range one (faces within ~2 m of the camera) finds."""

    def __init__(self, full_range, short_range):
        self.full_range, self.short_range = full_range, short_range

    def process(self, rgb: np.ndarray):
        found = self.full_range.process(rgb)
        return found if found.detections else self.short_range.process(rgb)


def _lm(landmarks, n: int, fields: str = "xyz") -> np.ndarray:
    if landmarks is None:
        return np.full((n, len(fields)), np.nan, np.float32)
    return np.array([[getattr(p, f) for f in fields] for p in landmarks.landmark], np.float32)


#: Face height (px) the sharpness is measured at: a face upscaled from a small source (or filmed at
#: 4K) is resized to this first, so the figure says how sharp the face is, not how big.
SHARPNESS_FACE_PX = 96


def _sharpness(rgb: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the grey face crop resized to ``SHARPNESS_FACE_PX`` high: low
    for motion blur and defocus, the same for one face filmed small or large."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = int(max(0, box[0])), int(max(0, box[1]))
    x1, y1 = int(min(w, box[2])), int(min(h, box[3]))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return float("nan")
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    scale = SHARPNESS_FACE_PX / (y1 - y0)
    size = (max(8, round((x1 - x0) * scale)), SHARPNESS_FACE_PX)
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def analyse_frame(models: LandmarkModels, rgb: np.ndarray, body: bool = True) -> dict[str, Any]:
    """Raw MediaPipe results of one frame, as arrays in pixel coordinates for boxes. ``faces`` holds
    up to ``models.max_faces`` face meshes (NaN rows for the missing), ``face`` the first of them.
    ``body=False`` skips the body and hand graphs (three quarters of the time of a frame): their
    landmarks come back NaN and their scores 0, for the caller to interpolate."""
    h, w = rgb.shape[:2]
    pose = models.pose.process(rgb).pose_landmarks if body else None
    hands = models.hands.process(rgb) if body else None
    mesh = models.mesh.process(rgb).multi_face_landmarks
    dets = models.faces.process(rgb).detections or []
    out = {
        "body": _lm(pose, 33, "xyz"),
        "body_visibility": _lm(pose, 33, ("visibility",))[:, 0],
        "faces": np.stack([_lm(mesh[k] if mesh and k < len(mesh) else None, 478, "xyz") for k in range(models.max_faces)]),
        "left_hand": np.full((21, 3), np.nan, np.float32), "right_hand": np.full((21, 3), np.nan, np.float32),
        "left_hand_score": 0.0, "right_hand_score": 0.0,
        "face_boxes": np.array([[d.location_data.relative_bounding_box.xmin * w, d.location_data.relative_bounding_box.ymin * h,
                                  (d.location_data.relative_bounding_box.xmin + d.location_data.relative_bounding_box.width) * w,
                                  (d.location_data.relative_bounding_box.ymin + d.location_data.relative_bounding_box.height) * h]
                                 for d in dets], np.float32).reshape(-1, 4),
        "face_scores": np.array([d.score[0] for d in dets], np.float32),
    }
    if models.crop_mesh is not None and len(dets) > (len(mesh) if mesh else 0):
        _mesh_missed_faces(models, rgb, out)
    out["face"] = out["faces"][0]
    out["face_sharpness"] = _sharpness(rgb, out["face_boxes"][out["face_scores"].argmax()]) if dets else np.nan
    for lms, cls in zip((hands.multi_hand_landmarks or []) if hands else [], (hands.multi_handedness or []) if hands else []):
        label, score = cls.classification[0].label, cls.classification[0].score
        side = "left_hand" if label == "Right" else "right_hand"  # MediaPipe assumes a mirrored image
        if score > out[f"{side}_score"]:
            out[side], out[f"{side}_score"] = _lm(lms, 21), float(score)
    return out


def _mesh_missed_faces(models: LandmarkModels, rgb: np.ndarray, out: dict[str, Any], side: int = 256) -> None:
    """Fill empty mesh slots with faces the full-range detector found but FaceMesh did not: a square
    crop of twice the detection box, upscaled to ``side`` px, meshed in static mode, mapped back."""
    import cv2

    h, w = rgb.shape[:2]
    faces = out["faces"]
    have = [_box(f[:, :2], w, h) for f in faces if not np.isnan(f[0, 0])]
    free = [k for k in range(len(faces)) if np.isnan(faces[k, 0, 0])]
    for j in np.argsort(-out["face_scores"]):
        if not free:
            return
        x0, y0, x1, y1 = out["face_boxes"][j]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in have):
            continue  # already meshed
        half = max(x1 - x0, y1 - y0)
        a0, b0 = int(max(0, cx - half)), int(max(0, cy - half))
        a1, b1 = int(min(w, cx + half)), int(min(h, cy + half))
        if a1 - a0 < 16 or b1 - b0 < 16:
            continue
        crop = cv2.resize(np.ascontiguousarray(rgb[b0:b1, a0:a1]), (side, side), interpolation=cv2.INTER_LINEAR)
        found = models.crop_mesh.process(crop).multi_face_landmarks
        if not found:
            continue
        pts = _lm(found[0], 478, "xyz")
        pts[:, 0] = (a0 + pts[:, 0] * (a1 - a0)) / w
        pts[:, 1] = (b0 + pts[:, 1] * (b1 - b0)) / h
        pts[:, 2] = pts[:, 2] * (a1 - a0) / w  # z is in units of the crop's width
        k = free.pop(0)
        faces[k] = pts
        have.append(_box(pts[:, :2], w, h))


#: Inner-lip mid points (upper, lower) and outer eye corners of the 478-point mesh.
INNER_LIP_MID = (13, 14)
EYE_CORNERS = (33, 263)


def mouth_opening(face: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inner-lip gap over the outer-eye-corner distance, per face, for meshes ``(..., 478, 2+)`` in
    [0, 1] image coordinates (NaN where there is no face). Scaled by the eye distance, which does not
    move when the jaw drops, so the series is comparable across face sizes and zoom."""
    xy = np.asarray(face[..., :2], np.float64) * np.array([width, height])
    gap = np.linalg.norm(xy[..., INNER_LIP_MID[0], :] - xy[..., INNER_LIP_MID[1], :], axis=-1)
    eyes = np.linalg.norm(xy[..., EYE_CORNERS[0], :] - xy[..., EYE_CORNERS[1], :], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (gap / eyes).astype(np.float32)


def mesh_box(face: np.ndarray, width: int, height: int) -> np.ndarray:
    """(4,) pixel box ``[x0, y0, x1, y1]`` of one face mesh (478, 2+) in [0, 1]; NaN when absent."""
    return _box(np.asarray(face)[:, :2], width, height)


def _box(points: np.ndarray, w: int, h: int) -> np.ndarray:
    pts = points[~np.isnan(points).any(axis=1)]
    if len(pts) == 0:
        return np.full(4, np.nan, np.float32)
    x0, y0 = np.clip(pts[:, 0].min() * w, 0, w), np.clip(pts[:, 1].min() * h, 0, h)
    x1, y1 = np.clip(pts[:, 0].max() * w, 0, w), np.clip(pts[:, 1].max() * h, 0, h)
    return np.array([x0, y0, x1, y1], np.float32)


def part_arrays(a: dict[str, np.ndarray], face_score: np.ndarray, face_box: np.ndarray, w: int, h: int) -> dict[str, np.ndarray]:
    """``part_confidences`` (T,P), ``part_present`` (T,P), ``part_boxes`` (T,P,4, NaN = absent) by the formula above."""
    T = len(face_score)
    vis = np.nan_to_num(a["body_visibility"], nan=0.0)
    body_found = ~np.isnan(a["body"][:, 0, 0])
    conf = np.zeros((T, len(PART_NAMES)), np.float32)
    boxes = np.full((T, len(PART_NAMES), 4), np.nan, np.float32)
    conf[:, 0] = face_score
    boxes[:, 0] = face_box
    conf[:, 1] = face_score * np.where(body_found, vis[:, [9, 10]].mean(axis=1), 0.0)
    for p, side in ((2, "left_hand"), (3, "right_hand")):
        hand_found = ~np.isnan(a[side][:, 0, 0])
        conf[:, p] = np.where(hand_found & body_found, vis[:, list(POSE_HAND_LANDMARKS[side])].mean(axis=1), 0.0)
    conf[:, 4] = np.where(body_found, vis[:, [11, 12]].mean(axis=1), 0.0)
    for t in range(T):
        if not np.isnan(a["face"][t, 0, 0]):
            boxes[t, 1] = _box(a["face"][t, LIPS], w, h)
        boxes[t, 2] = _box(a["left_hand"][t], w, h)
        boxes[t, 3] = _box(a["right_hand"][t], w, h)
        if body_found[t]:
            boxes[t, 4] = _box(a["body"][t, [11, 12, 23, 24]], w, h)
    conf = np.clip(conf, 0.0, 1.0)
    present = (conf > 0) & ~np.isnan(boxes[..., 0])
    # a hand the hand landmarker found is there even without a body pose to give it a confidence:
    # its box stays (occlusion of the mouth, PCE's hands region); PAR gives it no extra weight (conf 0)
    for p, side in ((2, "left_hand"), (3, "right_hand")):
        present[:, p] = ~np.isnan(a[side][:, 0, 0]) & ~np.isnan(boxes[:, p, 0])
    conf[~present] = 0.0
    boxes[~present] = np.nan
    return {"part_confidences": conf, "part_present": present, "part_boxes": boxes}
