"""Pose stage: MediaPipe body / hands / face landmarks per frame, part confidences, people count,
face track. Ray-free; ``PoseModels`` holds the MediaPipe graphs (load once per worker).

Part confidences (the inputs of PAHA's parts-aware re-weighting), per frame, each in [0, 1]; a
part not found is 0 with ``present = False``:

* ``face``      = BlazeFace (full-range) detection score of the tracked face.
* ``mouth``     = face × mean visibility of the pose's mouth corners (landmarks 9, 10).
* ``left_hand`` = handedness score of the subject's left hand × visibility of the left wrist
                  (pose 15) when a body was found; ``right_hand`` likewise (pose 16).
                  MediaPipe labels hands as seen in a mirror; frames here are not mirrored, so
                  its "Right" is the subject's left hand.
* ``torso``     = mean visibility of the shoulders (pose 11, 12): the upper torso, which is what
                  a half-body news shot shows (hips are usually out of frame).

Visibility and scores from the legacy solutions are probabilities already (sigmoid applied in
the graphs; checked: all values in [0, 1]). The legacy pose graph does not fill ``presence``
(it is 0 everywhere), so ``body_presence`` is stored as NaN and flagged.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from schemas import PART_NAMES, PoseTrack

from .errors import StageError

# Lip contour of the 478-point face mesh (MediaPipe FACEMESH_LIPS vertices).
LIPS = sorted({61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
               78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415})
BACKEND = "mediapipe-0.10.21:pose-full+hands-full+face-mesh-478+blazeface-full-range"


@dataclass(frozen=True)
class PoseOptions:
    stride: int = 1  # run the models on every stride-th frame; frames between are interpolated
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    track_iou: float = 0.3  # a face in the next frame with at least this IoU continues the track


class PoseModels:
    """The four MediaPipe graphs, created once (video mode: they track between frames)."""

    def __init__(self, opts: PoseOptions = PoseOptions()):
        import mediapipe as mp

        s = mp.solutions
        c = opts.min_detection_confidence
        self.options = opts
        self.pose = s.pose.Pose(static_image_mode=False, model_complexity=1, min_detection_confidence=c,
                                min_tracking_confidence=opts.min_tracking_confidence)
        self.hands = s.hands.Hands(static_image_mode=False, max_num_hands=2, model_complexity=1, min_detection_confidence=c)
        self.mesh = s.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True, min_detection_confidence=c)
        self.faces = s.face_detection.FaceDetection(model_selection=1, min_detection_confidence=c)

    def reset(self) -> None:
        """Forget tracking state (call between videos)."""
        self.__init__(self.options)


def read_frames(video_path: str, width: int, height: int) -> Iterator[np.ndarray]:
    """RGB frames (H, W, 3) uint8 of a video, decoded by ffmpeg one at a time (bounded memory)."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", video_path, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # an undrained stderr pipe can block ffmpeg
    size = width * height * 3
    try:
        while True:
            buf = proc.stdout.read(size)
            if len(buf) < size:
                break
            yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def _lm(landmarks, n: int, fields: str = "xyz") -> np.ndarray:
    if landmarks is None:
        return np.full((n, len(fields)), np.nan, np.float32)
    return np.array([[getattr(p, f) for f in fields] for p in landmarks.landmark], np.float32)


def _sharpness(rgb: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the grey face crop: low for motion blur and defocus."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = int(max(0, box[0])), int(max(0, box[1]))
    x1, y1 = int(min(w, box[2])), int(min(h, box[3]))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return float("nan")
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def analyse_frame(models: PoseModels, rgb: np.ndarray) -> dict[str, Any]:
    """Raw MediaPipe results of one frame, as arrays in pixel coordinates for boxes."""
    h, w = rgb.shape[:2]
    pose = models.pose.process(rgb).pose_landmarks
    hands = models.hands.process(rgb)
    mesh = models.mesh.process(rgb).multi_face_landmarks
    dets = models.faces.process(rgb).detections or []
    out = {
        "body": _lm(pose, 33, "xyz"),
        "body_visibility": _lm(pose, 33, ("visibility",))[:, 0],
        "face": _lm(mesh[0] if mesh else None, 478, "xyz"),
        "left_hand": np.full((21, 3), np.nan, np.float32), "right_hand": np.full((21, 3), np.nan, np.float32),
        "left_hand_score": 0.0, "right_hand_score": 0.0,
        "face_boxes": np.array([[d.location_data.relative_bounding_box.xmin * w, d.location_data.relative_bounding_box.ymin * h,
                                  (d.location_data.relative_bounding_box.xmin + d.location_data.relative_bounding_box.width) * w,
                                  (d.location_data.relative_bounding_box.ymin + d.location_data.relative_bounding_box.height) * h]
                                 for d in dets], np.float32).reshape(-1, 4),
        "face_scores": np.array([d.score[0] for d in dets], np.float32),
    }
    out["face_sharpness"] = _sharpness(rgb, out["face_boxes"][out["face_scores"].argmax()]) if dets else np.nan
    for lms, cls in zip(hands.multi_hand_landmarks or [], hands.multi_handedness or []):
        label, score = cls.classification[0].label, cls.classification[0].score
        side = "left_hand" if label == "Right" else "right_hand"  # MediaPipe assumes a mirrored image
        if score > out[f"{side}_score"]:
            out[side], out[f"{side}_score"] = _lm(lms, 21), float(score)
    return out


#: Per-frame landmark arrays: their shape per frame. ``face`` (the 478-point mesh) is 80 % of the bytes.
LANDMARK_SHAPES: dict[str, tuple[int, ...]] = {
    "body": (33, 3), "body_visibility": (33,), "face": (478, 3), "left_hand": (21, 3), "right_hand": (21, 3),
}
_PER_FRAME = ("left_hand_score", "right_hand_score", "face_sharpness", "face_boxes", "face_scores")


def extract_pose(models: PoseModels, video_path: str, width: int, height: int, fps: float, num_frames: int,
                 scratch_dir: str | None = None) -> dict[str, np.ndarray]:
    """Per-frame landmark arrays, part confidences/masks/boxes, people count and face track.

    Landmarks are normalised image coordinates (x, y in [0,1] of width/height, z relative), NaN
    where absent. Frames skipped by ``stride`` get linearly interpolated landmarks and
    ``interpolated = True``; their part confidences are those of the nearest analysed frame.

    The landmark arrays are allocated once at their final size (``num_frames`` rows, the probed
    count; a video that decodes to another count is a ``decode_failed`` error). With
    ``scratch_dir`` they are memory-mapped files there: an hour of video at 25 fps is ~0.6 GB of
    landmarks, which then costs disk and page cache, not the worker's heap.
    """
    opts = models.options
    models.reset()
    landmarks = {k: _allocate((num_frames, *shape), scratch_dir, k) for k, shape in LANDMARK_SHAPES.items()}
    per_frame: list[dict[str, Any] | None] = []  # analysed frames: scores and face boxes (a few numbers each)
    for t, rgb in enumerate(read_frames(video_path, width, height)):
        if t >= num_frames:
            raise StageError("decode_failed", f"{video_path} decodes to more than the {num_frames} frames probed")
        if t % opts.stride == 0 or t == num_frames - 1:
            r = analyse_frame(models, rgb)
            for key, array in landmarks.items():
                array[t] = r[key]
            per_frame.append({k: r[k] for k in _PER_FRAME})
        else:
            per_frame.append(None)
    T = len(per_frame)
    if T == 0:
        raise StageError("decode_failed", f"no frames decoded from {video_path}")
    if T < num_frames:
        raise StageError("decode_failed", f"decoded {T} of {num_frames} frames")
    analysed = np.array([r is not None for r in per_frame])
    idx = np.flatnonzero(analysed)
    # nearest analysed frame of every frame (O(T log n); a T x n distance matrix would not fit for hours of video)
    j = np.clip(np.searchsorted(idx, np.arange(T)), 1, max(len(idx) - 1, 1))
    left, right = idx[np.maximum(j - 1, 0)], idx[np.minimum(j, len(idx) - 1)]
    nearest = np.where(np.arange(T) - left <= right - np.arange(T), left, right)
    arrays: dict[str, np.ndarray] = dict(landmarks)
    if len(idx) < T:
        for array in landmarks.values():
            _interpolate_in_place(array, idx)
    for key in ("left_hand_score", "right_hand_score", "face_sharpness"):
        arrays[key] = np.array([per_frame[i][key] for i in nearest], np.float32)
    # face track: continue the previous frame's face by IoU; a jump starts a new identity
    track = np.full(T, -1, np.int32)
    face_score = np.zeros(T, np.float32)
    face_box = np.full((T, 4), np.nan, np.float32)
    num_people = np.zeros(T, np.int32)
    current, prev_box = -1, None
    for t in range(T):
        r = per_frame[nearest[t]]
        boxes, scores = r["face_boxes"], r["face_scores"]
        num_people[t] = len(scores)
        if len(scores) == 0:
            prev_box = None
            continue
        if prev_box is not None:
            ious = np.array([_iou(b, prev_box) for b in boxes])
            k = int(ious.argmax())
            if ious[k] < opts.track_iou:
                k, current = int(scores.argmax()), current + 1
        else:
            k, current = int(scores.argmax()), current + 1
        track[t], face_score[t], face_box[t] = current, scores[k], boxes[k]
        prev_box = boxes[k]
    arrays.update(face_track=track, num_people=num_people, interpolated=~analysed)
    arrays.update(part_arrays(arrays, face_score, face_box, width, height))
    arrays["body_presence"] = np.full((T, 33), np.nan, np.float32)
    arrays["part_names"] = np.array(PART_NAMES)
    arrays["fps"] = np.array(fps, np.float32)
    return arrays


def _allocate(shape: tuple[int, ...], scratch_dir: str | None, name: str) -> np.ndarray:
    """A NaN-filled float32 array: in memory, or a memory-mapped ``.npy`` file in ``scratch_dir``."""
    if scratch_dir is None:
        return np.full(shape, np.nan, np.float32)
    array = np.lib.format.open_memmap(os.path.join(scratch_dir, f"{name}.npy"), mode="w+", dtype=np.float32, shape=shape)
    array[:] = np.nan
    return array


def _interpolate_in_place(array: np.ndarray, idx: np.ndarray, block: int = 16) -> None:
    """Fill the rows not in ``idx`` linearly from the analysed rows ``idx``, ``block`` columns at a
    time (bounded temporaries). A value stays NaN where it was absent on either side."""
    T = len(array)
    flat = array.reshape(T, -1)
    frames = np.arange(T)
    for c0 in range(0, flat.shape[1], block):
        known = np.asarray(flat[idx, c0: c0 + block])
        out = np.empty((T, known.shape[1]), np.float32)
        for j in range(known.shape[1]):
            ok = ~np.isnan(known[:, j])
            out[:, j] = np.interp(frames, idx[ok], known[ok, j]) if ok.any() else np.nan
            # do not invent a part across frames where it was absent on either side
            out[np.interp(frames, idx, (~ok).astype(float)) > 0, j] = np.nan
        flat[:, c0: c0 + block] = out


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
    for p, side, wrist in ((2, "left_hand", 15), (3, "right_hand", 16)):
        hand_found = ~np.isnan(a[side][:, 0, 0])
        score = np.where(hand_found, a[f"{side}_score"], 0.0)
        conf[:, p] = score * np.where(body_found, vis[:, wrist], 1.0)
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
    conf[~present] = 0.0
    boxes[~present] = np.nan
    return {"part_confidences": conf, "part_present": present, "part_boxes": boxes}


def pose_track(arrays: dict[str, np.ndarray], start: int = 0, end: int | None = None) -> PoseTrack:
    """The validated ``PoseTrack`` record of frames ``[start, end)`` (checks ranges and lengths)."""
    sl = slice(start, end)
    conf, present, boxes = arrays["part_confidences"][sl], arrays["part_present"][sl], arrays["part_boxes"][sl]
    return PoseTrack(
        num_frames=len(conf), fps=float(arrays["fps"]), part_names=[str(n) for n in arrays["part_names"]],
        part_confidences=conf.tolist(), part_present=present.tolist(),
        part_boxes=[[None if np.isnan(b[0]) else b.tolist() for b in frame] for frame in boxes],
        num_people=arrays["num_people"][sl].tolist(), backend=BACKEND,
    )


def slice_pose(arrays: dict[str, np.ndarray], start: int, end: int) -> dict[str, np.ndarray]:
    """Arrays of frames ``[start, end)`` (per-frame arrays sliced, constants kept) for a clip's pose.npz."""
    T = len(arrays["part_confidences"])
    return {k: (v[start:end] if v.ndim >= 1 and len(v) == T and k != "part_names" else v) for k, v in arrays.items()}


def save_pose(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write a video's pose arrays as an *uncompressed* ``.npz`` (atomically): its members can be
    memory-mapped by ``load_pose``, so the clip stages read a clip's frames, not the whole video.
    Landmark floats compress poorly: the file was 16 % larger than ``savez_compressed``'s on
    landmark-like data (benchmarks/pose_memory.py); runs of NaN (absent hands) compress better."""
    from .errors import temp_name

    tmp = temp_name(path, ".npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # streams each array in 16 MiB chunks: memory-mapped inputs stay on disk
    os.replace(tmp, path)


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_pose(path: str, min_mapped_bytes: int = 1 << 20) -> dict[str, np.ndarray]:
    """A video's pose arrays; members of ``min_mapped_bytes`` or more stored uncompressed (as
    ``save_pose`` writes them) come back as read-only memory maps, everything else is read. An
    older compressed ``pose.npz`` loads whole. Maps stay valid after ``path`` is removed (POSIX)."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_STORED and info.file_size >= min_mapped_bytes:
                # the member's data starts after its local header: 30 bytes + name + extra field
                raw.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
                raw.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
                read_header = _NPY_HEADERS.get(np.lib.format.read_magic(raw))
                if read_header is not None:
                    shape, fortran, dtype = read_header(raw)
                    if not dtype.hasobject:
                        # mapped through the open file: a concurrent os.replace of path cannot swap it
                        out[key] = np.memmap(raw, dtype=dtype, mode="r", offset=raw.tell(), shape=shape,
                                             order="F" if fortran else "C")
                        continue
            with zf.open(info) as member:
                out[key] = np.lib.format.read_array(member, allow_pickle=False)
    return out
