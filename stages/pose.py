"""Pose stage: MediaPipe body / hands / face landmarks per frame, part confidences, people count,
face track. Ray-free; ``PoseModels`` holds the MediaPipe graphs (load once per worker).

Part confidences and boxes (the inputs of PAHA's parts-aware re-weighting) are computed by
``geometry.landmarks.part_arrays``; its docstring gives the formula per part.

Visibility and scores from the legacy solutions are probabilities already (sigmoid applied in
the graphs; checked: all values in [0, 1]). The legacy pose graph does not fill ``presence``
(it is 0 everywhere), so ``body_presence`` is stored as NaN and flagged.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Any, Iterator

import numpy as np

from pydantic import Field

from geometry.head_pose import head_poses_deg
from geometry.landmark_codec import encode_pose_member, pad_slots, trim_slots
from geometry.landmarks import BACKEND, LIPS, LandmarkModels, analyse_frame, mesh_box, mouth_opening, part_arrays
from schemas import PART_NAMES, PoseTrack
from schemas.settings import Settings

from .frames import read_frames, read_spans
from .errors import StageError


class PoseOptions(Settings):
    """Options of the pose stage (config section ``pose``)."""

    enabled: bool = True
    stride: int = Field(1, ge=1, description="analyse every n-th frame, interpolate the rest (flagged)")
    min_detection_confidence: float = Field(0.5, ge=0, le=1)
    min_tracking_confidence: float = Field(0.5, ge=0, le=1)
    track_iou: float = Field(0.3, ge=0, le=1, description="a face in the next frame with at least this IoU continues the track")
    max_faces: int = Field(2, ge=1, le=8, description="face meshes tracked per frame (two anchors at a desk: 2); each one's lips are scored for sync")
    body_every: int = Field(3, ge=1, description="body and hand graphs on every n-th analysed frame, interpolated between (they cost 3/4 of a frame; the face mesh runs on every analysed frame)")
    cascade: bool = Field(True, description="mesh only candidate spans (a large enough face, speech, a long enough shot; stages/candidates.py); false: every frame")
    scan_every: int = Field(10, ge=1, description="cascade: BlazeFace on every n-th frame (10 at 25 fps: 2.5 fps)")
    candidate_min_face_frac: float = Field(0.06, ge=0, le=1, description="cascade: a BlazeFace box at least this share of the frame height (keep it below clips.min_face_height_frac, 0.08)")
    candidate_pad_s: float = Field(0.8, ge=0, description="cascade: seconds around a face sample and around speech that still count (keep it at or over clips.turn_gap_s / 2: a pause a clip may hold is looked at)")
    candidate_min_shot_s: float = Field(1.0, ge=0, description="cascade: shorter shots are skipped (keep it at or below clips.min_clip_s)")


class PoseModels(LandmarkModels):
    """The MediaPipe graphs the pose stage runs, configured by its options (load once per worker)."""

    def __init__(self, opts: PoseOptions | None = None):
        self.options = opts or PoseOptions()
        super().__init__(self.options.min_detection_confidence, self.options.min_tracking_confidence, self.options.max_faces)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


#: Per-frame landmark arrays: their shape per frame. ``faces`` (a 478-point mesh per tracked face,
#: ``max_faces`` slots) is most of the bytes.
LANDMARK_SHAPES: dict[str, tuple[int, ...]] = {
    "body": (33, 3), "body_visibility": (33,), "left_hand": (21, 3), "right_hand": (21, 3),
}


def landmark_shapes(max_faces: int) -> dict[str, tuple[int, ...]]:
    return {**LANDMARK_SHAPES, "faces": (max_faces, 478, 3)}


class FaceSlots:
    """Online tracking of up to K face meshes: a face continues the slot whose previous box it
    overlaps most (IoU ≥ ``min_iou``, greedy, best pairs first); a face matching no slot takes a free
    slot and a new track id. Track ids never repeat within a video."""

    def __init__(self, k: int, min_iou: float):
        self.boxes: list[np.ndarray | None] = [None] * k
        self.ids = [-1] * k
        self.min_iou, self._next = min_iou, 0

    def assign(self, boxes: list[np.ndarray | None]) -> list[int]:
        """For each slot, the index into ``boxes`` of the face it holds now (-1: empty)."""
        k = len(self.boxes)
        pairs = sorted(((_iou(b, p), s, j) for s, p in enumerate(self.boxes) if p is not None
                        for j, b in enumerate(boxes) if b is not None), reverse=True)
        order, taken = [-1] * k, set()
        for iou, s, j in pairs:
            if iou >= self.min_iou and order[s] < 0 and j not in taken:
                order[s] = j
                taken.add(j)
        for s in range(k):
            if order[s] < 0:
                self.ids[s] = -1
        free = [s for s in range(k) if order[s] < 0]
        for j, b in enumerate(boxes):
            if b is not None and j not in taken and free:
                s = free.pop(0)
                order[s], self.ids[s] = j, self._next
                self._next += 1
        self.boxes = [boxes[j] if j >= 0 else None for j in order]
        return order


#: Landmark arrays of the body and hand graphs (``body_every``); the face meshes are the others.
BODY_KEYS = ("body", "body_visibility", "left_hand", "right_hand")
_PER_FRAME = ("left_hand_score", "right_hand_score", "face_sharpness", "face_boxes", "face_scores")


def extract_pose(models: PoseModels, video_path: str, width: int, height: int, fps: float, num_frames: int,
                 scratch_dir: str | None = None, spans: list[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Per-frame landmark arrays, part confidences/masks/boxes, people count and face track.

    Landmarks are normalised image coordinates (x, y in [0,1] of width/height, z relative), NaN
    where absent. Frames skipped by ``stride`` get linearly interpolated landmarks and
    ``interpolated = True``; their part confidences are those of the nearest analysed frame.

    The landmark arrays are allocated once at their final size (``num_frames`` rows, the probed
    count; a video that decodes to another count is a ``decode_failed`` error). With
    ``scratch_dir`` they are memory-mapped files there: an hour of video at 25 fps is ~0.6 GB of
    landmarks, which then costs disk and page cache, not the worker's heap.

    ``spans`` (the cascade's candidate spans, ``[a, b)``): only those frames are decoded and
    analysed; the others hold no landmarks and no faces and are flagged ``skipped`` (not looked
    at). The first and last frame of every span are analysed whatever the stride, so interpolation
    never reaches across a span's edge.
    """
    opts = models.options
    models.reset()
    K = models.max_faces
    landmarks = {k: _allocate((num_frames, *shape), scratch_dir, k) for k, shape in landmark_shapes(K).items()}
    # analysed frames: scores and face boxes (a few numbers each); None: interpolated (stride)
    per_frame: list[dict[str, Any] | None] = [None] * num_frames
    skipped = np.zeros(num_frames, bool)
    edges: set[int] = {num_frames - 1}
    if spans is None:
        frames: Iterator[tuple[int, np.ndarray]] = enumerate(read_frames(video_path, width, height))
        expected = num_frames
    else:
        skipped[:] = True
        for a, b in spans:
            skipped[a:b] = False
            edges |= {a, b - 1}
        nothing = {"left_hand_score": 0.0, "right_hand_score": 0.0, "face_sharpness": np.nan,
                   "face_boxes": np.zeros((0, 4), np.float32), "face_scores": np.zeros(0, np.float32), "slot_ids": [-1] * K}
        for t in np.flatnonzero(skipped):
            per_frame[t] = nothing  # looked at by nobody: no face, no hands (shared: never mutated)
        frames = read_spans(video_path, width, height, spans)
        expected = int(num_frames - skipped.sum())
    slots = FaceSlots(K, opts.track_iou)
    decoded = 0
    with_body = np.zeros(num_frames, bool)  # frames the body and hand graphs ran on
    with_body[skipped] = True  # known: nothing there
    for t, rgb in frames:
        if t >= num_frames:
            raise StageError("decode_failed", f"{video_path} decodes to more than the {num_frames} frames probed")
        decoded += 1
        if t % opts.stride == 0 or t in edges:
            body = t % (opts.stride * opts.body_every) == 0 or t in edges
            with_body[t] = body
            r = analyse_frame(models, rgb, body=body)
            mesh_boxes = [None if np.isnan(f[0, 0]) else mesh_box(f, width, height) for f in r["faces"]]
            order = slots.assign(mesh_boxes)
            r["faces"] = np.stack([r["faces"][j] if j >= 0 else np.full((478, 3), np.nan, np.float32) for j in order])
            for key, array in landmarks.items():
                array[t] = r[key]
            per_frame[t] = {**{k: r[k] for k in _PER_FRAME}, "slot_ids": list(slots.ids)}
    T = num_frames
    if decoded == 0 and expected:
        raise StageError("decode_failed", f"no frames decoded from {video_path}")
    if decoded < expected:
        raise StageError("decode_failed", f"decoded {decoded} of {expected} frames")
    if spans is None and decoded != num_frames:
        raise StageError("decode_failed", f"decoded {decoded} of {num_frames} frames")
    analysed = np.array([r is not None for r in per_frame])
    idx = np.flatnonzero(analysed)
    nearest = _nearest(idx, T)
    arrays: dict[str, np.ndarray] = dict(landmarks)
    body_idx = np.flatnonzero(with_body)
    for key, array in landmarks.items():
        rows = body_idx if key in BODY_KEYS else idx
        if len(rows) < T:
            _interpolate_in_place(array, rows)
    nearest_body = _nearest(body_idx, T)
    for key in ("left_hand_score", "right_hand_score"):
        arrays[key] = np.array([per_frame[i][key] for i in nearest_body], np.float32)
    arrays["face_sharpness"] = np.array([per_frame[i]["face_sharpness"] for i in nearest], np.float32)
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
    arrays.update(face_track=track, num_people=num_people, interpolated=~analysed, skipped=skipped)
    arrays.update(_face_slot_arrays(arrays["faces"], face_box, [per_frame[i]["slot_ids"] for i in nearest], width, height))
    arrays["face"] = arrays["faces"][:, 0]  # the primary face (a view: not stored twice)
    arrays.update(part_arrays(arrays, face_score, face_box, width, height))
    arrays["head_pose"] = arrays["faces_head_pose"][:, 0]  # (T, 3) yaw, pitch, roll in degrees of the primary face
    arrays["body_presence"] = np.full((T, 33), np.nan, np.float32)
    arrays["part_names"] = np.array(PART_NAMES)
    arrays["fps"] = np.array(fps, np.float32)
    arrays["frame_size"] = np.array([width, height], np.int32)
    return arrays


def _face_slot_arrays(faces: np.ndarray, face_box: np.ndarray, slot_ids: list[list[int]], width: int, height: int,
                      block: int = 4096) -> dict[str, np.ndarray]:
    """Per-slot track ids, boxes, mouth openings and head poses of the face meshes, with the slots of
    every frame reordered (in place in ``faces``) so that slot 0 holds the primary face: the mesh
    that overlaps the tracked BlazeFace face most (else the largest mesh)."""
    T, K = faces.shape[:2]
    ids = np.array(slot_ids, np.int32).reshape(T, K)
    boxes = np.full((T, K, 4), np.nan, np.float32)
    for start in range(0, T, block):  # chunks: ``faces`` may be memory-mapped (hours of video)
        xy = np.asarray(faces[start:start + block, :, :, :2])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slots
            lo, hi = np.nanmin(xy, axis=2), np.nanmax(xy, axis=2)
        boxes[start:start + block] = np.concatenate([np.clip(lo, 0, 1), np.clip(hi, 0, 1)], axis=-1) * [width, height, width, height]
    present = ~np.isnan(boxes[..., 0])
    ids[~present] = -1
    for t in range(T):
        if K == 1 or not present[t].any():
            continue
        overlap = [(_iou(boxes[t, s], face_box[t]) if present[t, s] and not np.isnan(face_box[t, 0]) else -1.0) for s in range(K)]
        area = [(boxes[t, s, 2] - boxes[t, s, 0]) * (boxes[t, s, 3] - boxes[t, s, 1]) if present[t, s] else -1.0 for s in range(K)]
        primary = int(np.argmax(overlap)) if max(overlap) > 0.1 else int(np.argmax(area))
        if primary != 0:  # swap storage slots: track ids say who is who, the slot is only a place
            perm = [primary] + [s for s in range(K) if s != primary]
            faces[t] = faces[t][perm]
            ids[t], boxes[t], present[t] = ids[t][perm], boxes[t][perm], present[t][perm]
    mouth = np.full((T, K), np.nan, np.float32)
    head = np.full((T, K, 3), np.nan, np.float32)
    for s in range(K):
        for start in range(0, T, block):
            mouth[start:start + block, s] = mouth_opening(np.asarray(faces[start:start + block, s]), width, height)
        head[:, s] = head_poses_deg(faces[:, s], width, height, block)
    return {"faces_track": ids, "faces_box": boxes, "faces_mouth": mouth, "faces_head_pose": head}


def _nearest(idx: np.ndarray, T: int) -> np.ndarray:
    """The nearest of the frames ``idx`` (sorted) to every frame ``0..T-1`` (O(T log n); a T x n
    distance matrix would not fit for hours of video)."""
    j = np.clip(np.searchsorted(idx, np.arange(T)), 1, max(len(idx) - 1, 1))
    left, right = idx[np.maximum(j - 1, 0)], idx[np.minimum(j, len(idx) - 1)]
    return np.where(np.arange(T) - left <= right - np.arange(T), left, right)


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


def slice_pose(arrays: dict[str, np.ndarray], start: int, end: int, track: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of frames ``[start, end)`` (per-frame arrays sliced, constants kept) for a clip's pose.npz.

    ``track`` (a face track id of ``faces_track``) makes the clip's ``face``, ``head_pose`` and face
    and mouth boxes that person's, frame by frame (the speaker of a two-anchor shot); the mesh slots
    of the other faces stay in the video's file only.
    """
    T = len(arrays["part_confidences"])
    out = {k: (v[start:end] if v.ndim >= 1 and len(v) == T and k != "part_names" else v) for k, v in arrays.items() if k != "faces"}
    if track is None or "faces" not in arrays:
        if "face" in out:
            out["face"] = np.asarray(out["face"])
        return out
    ids = np.asarray(arrays["faces_track"][start:end])
    slot = np.where((ids == track).any(axis=1), (ids == track).argmax(axis=1), -1)
    rows = np.arange(end - start)
    mesh = np.asarray(arrays["faces"][start:end])[rows, np.maximum(slot, 0)]
    mesh[slot < 0] = np.nan
    out["face"] = mesh
    out["head_pose"] = np.where((slot >= 0)[:, None], out["faces_head_pose"][rows, np.maximum(slot, 0)], np.nan).astype(np.float32)
    if (slot != 0).any():  # another person than the primary face: their own face and mouth boxes
        boxes = out["part_boxes"].copy()
        w, h = _frame_size(arrays)
        for i in np.flatnonzero(slot != 0):
            boxes[i, 0] = out["faces_box"][i, slot[i]] if slot[i] >= 0 else np.nan
            boxes[i, 1] = mesh_box(mesh[i, list(LIPS)], w, h) if slot[i] >= 0 else np.nan
        out["part_boxes"] = boxes
    return out


def _frame_size(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """Width and height of the video the arrays were measured on (recorded by ``extract_pose``)."""
    w, h = np.asarray(arrays["frame_size"]).tolist()
    return int(w), int(h)


def save_pose(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write a video's pose arrays as an *uncompressed* ``.npz`` (atomically): its members can be
    memory-mapped by ``load_pose``, so the clip stages read a clip's frames, not the whole video.
    Landmark floats compress poorly: the file was 16 % larger than ``savez_compressed``'s on
    landmark-like data (benchmarks/pose_memory.py); runs of NaN (absent hands) compress better.
    Face slots no frame uses are left out (``geometry.landmark_codec.trim_slots``): with one person
    on screen the second slot of ``faces`` was half the file; ``load_pose`` pads them back."""
    from .files import temp_name

    tmp = temp_name(path, ".npz")
    if "faces" in arrays:  # ``face`` is a view of the primary slot of ``faces``: stored once
        arrays = {k: v for k, v in arrays.items() if k != "face"}
    with open(tmp, "wb") as f:
        np.savez(f, **trim_slots(arrays))  # streams each array in 16 MiB chunks: memory-mapped inputs stay on disk
    os.replace(tmp, path)


def write_clip_pose(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write a clip's ``pose.npz`` shard member (``slice_pose``'s arrays, plus ``face_embedding``)
    in layout 2, compressed and atomically: landmarks fixed-point (``geometry.landmark_codec``;
    at most 1.5e-5 of the frame off, 0.03 px at 1920). Read it with ``decode_pose_member``."""
    from .files import write_npz

    write_npz(path, encode_pose_member(arrays))


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_pose(path: str, min_mapped_bytes: int = 1 << 20) -> dict[str, np.ndarray]:
    """A video's pose arrays; members of ``min_mapped_bytes`` or more stored uncompressed (as
    ``save_pose`` writes them) come back as read-only memory maps, everything else is read. An
    older compressed ``pose.npz`` loads whole. Maps stay valid after ``path`` is removed (POSIX).
    Face slots ``save_pose`` left out are padded back: ``faces`` is then a ``SlotPadded`` over the
    map (indexing it gives numpy arrays; ``np.asarray`` the whole), the small per-slot arrays copies."""
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
    out = pad_slots(out, lazy=True)
    if "faces" in out and "face" not in out:
        out["face"] = out["faces"][:, 0]
    return out


def pose_quality(pose: dict[str, np.ndarray], f0: int, f1: int, height: int) -> dict[str, float]:
    """Quality figures of frames ``[f0, f1)`` for a clip record: mean part confidences, median face
    height (fraction of the frame) and sharpness, most people seen in one frame."""
    conf = pose["part_confidences"][f0:f1]
    face = pose["part_boxes"][f0:f1, 0]
    q = {f"mean_{name}_confidence": round(float(conf[:, i].mean()), 4) for i, name in enumerate(pose["part_names"])}
    if not np.isnan(face[:, 0]).all():
        q["face_height_frac"] = round(float(np.nanmedian(face[:, 3] - face[:, 1]) / height), 4)
    sharp = pose["face_sharpness"][f0:f1]
    if not np.isnan(sharp).all():
        q["face_sharpness"] = round(float(np.nanmedian(sharp)), 2)
    q["max_people"] = float(pose["num_people"][f0:f1].max())
    head = pose["head_pose"][f0:f1] if "head_pose" in pose else np.full((1, 3), np.nan)
    for i, angle in enumerate(("yaw", "pitch", "roll")):
        if not np.isnan(head[:, i]).all():
            q[f"head_{angle}_mean_deg"] = round(float(np.nanmean(head[:, i])), 2)
            q[f"head_{angle}_range_deg"] = round(float(np.nanmax(head[:, i]) - np.nanmin(head[:, i])), 2)
    return q
