"""Compact storage of pose arrays: fixed-point landmarks and only the face slots in use (pose.npz layout 2).

Pure numpy, shared by the pose stage (writes a clip's ``pose.npz``, reads the video's) and the
trainers (read shard samples), so neither imports the other.

**Fixed-point landmarks** (``FIXED_POINT_KEYS``, in a clip's pose.npz): each coordinate, in
MediaPipe's frame-normalised units (x of the width, y of the height, z in units of the width; the
body visibility, a probability, goes the same way), is stored as the integer
``q = round(v / STEP)`` with ``STEP = 2**-15``: the error is at most ``STEP / 2`` (1.5e-5 of the
frame: 0.029 px at 1920 px, 0.059 px at 3840 px), the same inside and outside the frame, for any
``|v| < MAX_ABS`` (65535 frame units: a body point extrapolated far off-screen still round-trips).
NaN (absent) is the code ``NAN_CODE`` (int32 min). Float16 was no option: its spacing between 0.5
and 1 is 2**-11 of the frame (0.47 px off at 1920 on the demo's faces), and float16 relative to
the face box is 0.13 px off on a frame-high face.
To make the codes compress, they are stored as differences to the previous frame (landmarks move
little between frames), zigzag-mapped to small unsigned numbers, split into four byte planes
(``(4, T, ...)`` uint8, little-endian order), and deflated by ``np.savez_compressed``: a face mesh
takes 3.7× less than compressed float32 (docs/BENCHMARKS.md "Leaner shards"). All integer steps
wrap modulo 2**32 and are exact, so only the quantisation loses anything.

**Face slots** (``SLOT_FILL``, in the work dir's video pose.npz): per-slot arrays ``(T, K, ...)``
are stored without the trailing slots that hold nothing (fill values only), and ``faces_slots`` =
K; slot 0 is always stored. That file is stored uncompressed (memory-mapped), where an unused
second slot of ``faces`` was half the file. A clip's pose.npz keeps its K slots: deflate already
squeezes an empty slot to a few bytes, less than the ``faces_slots`` member would cost. Readers pad
(``pad_slots``), so callers see K slots as before.

``decode_pose_member`` reads either layout (1.x: dense float32, no ``pose_layout``; 2: as above)
and returns the dense float32 arrays of layout 1.
"""

from __future__ import annotations

import io
import operator
from typing import Any, Iterable, Mapping

import numpy as np
from numpy.typing import ArrayLike

#: Quantisation step of the landmark coordinates, in frame units (a power of two: decoding is exact).
STEP_LOG2 = 15
STEP = 2.0 ** -STEP_LOG2
#: Coordinates must stay below this magnitude (codes are int32; one code is the NaN sentinel).
MAX_ABS = 2.0 ** (31 - STEP_LOG2) - 1
#: Code of an absent (NaN) coordinate.
NAN_CODE = np.iinfo(np.int32).min
#: Suffix of a fixed-point member: ``face__fx15`` holds the byte planes of ``face``.
FIXED_SUFFIX = f"__fx{STEP_LOG2}"
#: Member saying which layout wrote the file (absent in layout 1), and the layout this module writes.
LAYOUT_KEY, LAYOUT = "pose_layout", 2
#: Member holding the number of face slots K before empty trailing slots were left out.
SLOTS_KEY = "faces_slots"
#: Arrays stored fixed-point in a clip's pose.npz: the landmarks, and the body visibility (a
#: quarter of its compressed float32 size; 1.5e-5 off at most).
FIXED_POINT_KEYS = ("face", "faces", "body", "body_visibility", "left_hand", "right_hand")
#: Per-face-slot arrays (slot axis 1) and the value of an empty slot; the small ones first, so a
#: used slot is found before the meshes (an hour of them) are read.
SLOT_FILL: dict[str, float | int] = {"faces_track": -1, "faces_box": np.nan, "faces_mouth": np.nan, "faces_head_pose": np.nan,
                                     "faces": np.nan}
#: Most face slots a reader pads to (``pose.max_faces`` is at most 8): a crafted ``faces_slots``
#: cannot make it allocate without bound.
MAX_SLOTS = 64


def encode_landmarks(values: ArrayLike) -> np.ndarray:
    """``(T, ...)`` coordinates → ``(4, T, ...)`` uint8 byte planes of the zigzagged frame-to-frame
    differences of their fixed-point codes. ValueError for ±inf or ``|v| >= MAX_ABS``."""
    v = np.asarray(values, np.float64)
    if v.ndim < 1:
        raise ValueError("landmarks need a frame axis")
    nan = np.isnan(v)
    finite = v[~nan]
    if finite.size and not (np.isfinite(finite).all() and np.abs(finite).max() < MAX_ABS):
        raise ValueError(f"landmark coordinates must be finite and below {MAX_ABS:g} in magnitude (NaN for absent)")
    q = np.where(nan, NAN_CODE, np.rint(np.where(nan, 0.0, v) * 2.0 ** STEP_LOG2)).astype(np.int32)
    u = q.view(np.uint32)
    d = u.copy()
    d[1:] -= u[:-1]  # unsigned: wraps modulo 2**32, so NaN codes next to values need no special case
    s = d.view(np.int32)
    z = ((s << 1) ^ (s >> 31)).view(np.uint32)  # zigzag: small differences of either sign -> small numbers
    return np.ascontiguousarray(np.moveaxis(z.astype("<u4").view(np.uint8).reshape(*z.shape, 4), -1, 0))


def decode_landmarks(planes: ArrayLike) -> np.ndarray:
    """Inverse of ``encode_landmarks``: ``(4, T, ...)`` byte planes → ``(T, ...)`` float32, NaN where absent."""
    p = np.asarray(planes)
    if p.dtype != np.uint8 or p.ndim < 2 or p.shape[0] != 4:
        raise ValueError(f"fixed-point landmarks are (4, T, ...) uint8 byte planes, got {p.dtype} {p.shape}")
    z = np.ascontiguousarray(np.moveaxis(p, 0, -1)).view("<u4")[..., 0].astype(np.uint32)
    d = (z >> np.uint32(1)) ^ (np.uint32(0) - (z & np.uint32(1)))  # un-zigzag
    q = np.cumsum(d, axis=0, dtype=np.uint32).view(np.int32)  # wraps modulo 2**32, as the encoder did
    out = (q * STEP).astype(np.float32)  # |q| < 2**31: exact in float64
    out[q == NAN_CODE] = np.nan
    return out


def _slot_is_fill(array: Any, slot: int, fill: float | int, block: int = 4096) -> bool:
    """Whether slot ``slot`` of a (T, K, ...) array holds only ``fill``, a block of frames at a time
    (the array may be a memory map of an hour of video)."""
    for start in range(0, len(array), block):
        part = np.asarray(array[start:start + block, slot])
        if not (np.isnan(part).all() if np.isnan(fill) else (part == fill).all()):
            return False
    return True


def trim_slots(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """The arrays with the trailing face slots that hold nothing left out of every per-slot array
    (views, no copy) and ``faces_slots`` = K added; slot 0 is always kept. Lossless: a slot is
    dropped only where every per-slot array holds its fill value there."""
    out = dict(arrays)
    if "faces_track" not in out:
        return out
    K = int(np.shape(out["faces_track"])[1])
    keep = K
    while keep > 1 and all(_slot_is_fill(out[k], keep - 1, fill) for k, fill in SLOT_FILL.items() if k in out):
        keep -= 1
    for k in SLOT_FILL:
        if k in out:
            out[k] = out[k][:, :keep]
    out[SLOTS_KEY] = np.array(K, np.int32)
    return out


class SlotPadded:
    """A read-only ``(T, K, ...)`` array of which only slots ``[0, k)`` are stored (a memory map
    stays one); the others read as ``fill``. Indexing gives numpy arrays: a stored slot alone
    (``a[:, 0]``, ``a[t0:t1, 0, :, :2]``) is a view of the stored array, a missing slot alone a
    broadcast of ``fill`` (no memory), anything else the selected frames padded (a copy)."""

    def __init__(self, stored: np.ndarray, slots: int, fill: float | int = np.nan):
        self.stored, self.fill = stored, fill
        self.shape: tuple[int, ...] = (stored.shape[0], slots, *stored.shape[2:])
        self.dtype, self.ndim = stored.dtype, stored.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis or k is None for k in key):
            return np.asarray(self)[key]
        k = self.stored.shape[1]
        if len(key) >= 2 and isinstance(key[1], (int, np.integer)):
            s = operator.index(key[1])
            s += self.shape[1] if s < 0 else 0
            if not 0 <= s < self.shape[1]:
                raise IndexError(f"slot {key[1]} out of range for {self.shape[1]} slots")
            if s < k:
                return self.stored[(key[0], s, *key[2:])]
            return np.broadcast_to(np.array(self.fill, self.dtype), self.shape)[key]
        rows = np.asarray(self.stored[key[0]]) if key else np.asarray(self.stored)
        axis = 0 if rows.ndim == self.ndim - 1 else 1  # an integer frame index drops the frame axis
        pad = list(rows.shape)
        pad[axis] = self.shape[1] - k
        full = np.concatenate([rows, np.full(pad, self.fill, self.dtype)], axis=axis)
        return full[key[1:]] if axis == 0 else full[(slice(None), *key[1:])]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        full = self[:]
        return full if dtype is None else full.astype(dtype)


def pad_slots(arrays: Mapping[str, Any], lazy: bool = False) -> dict[str, Any]:
    """Inverse of ``trim_slots``: per-slot arrays padded back to ``faces_slots`` slots with their
    fill values, ``faces_slots`` removed. ``lazy``: ``faces`` becomes a ``SlotPadded`` (keeps a
    memory-mapped mesh array mapped) instead of a padded copy."""
    out = dict(arrays)
    if SLOTS_KEY not in out:
        return out
    K = int(out.pop(SLOTS_KEY))
    if not 1 <= K <= MAX_SLOTS:
        raise ValueError(f"faces_slots = {K}: not between 1 and {MAX_SLOTS}")
    for name, fill in SLOT_FILL.items():
        a = out.get(name)
        if a is None or a.shape[1] >= K:
            continue
        if lazy and name == "faces":
            out[name] = SlotPadded(a, K, fill)
        else:
            out[name] = np.concatenate([np.asarray(a), np.full((a.shape[0], K - a.shape[1], *a.shape[2:]), fill, a.dtype)], axis=1)
    return out


def encode_pose_member(arrays: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """The arrays of a clip's ``pose.npz`` in layout 2: ``FIXED_POINT_KEYS`` fixed-point (as
    ``<name>__fx15``), the rest as they are, ``pose_layout`` = 2. Write it with ``np.savez_compressed``
    (the byte planes are made for deflate: stored, the file is larger than float32)."""
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if name in FIXED_POINT_KEYS:
            out[name + FIXED_SUFFIX] = encode_landmarks(value)
        else:
            out[name] = np.asarray(value)
    out[LAYOUT_KEY] = np.array(LAYOUT, np.int32)
    return out


def decode_pose_member(source: bytes | Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The dense float32 arrays of a clip's ``pose.npz`` (the bytes of the member, an open
    ``np.load`` or a dict of its arrays), layout 1 or 2 alike. ``keys``: decode only these arrays
    (a trainer that wants the part confidences does not unpack the face mesh)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        with np.load(io.BytesIO(bytes(source)), allow_pickle=False) as z:
            return decode_pose_member(z, keys)
    names = list(source.files if hasattr(source, "files") else source.keys())
    if LAYOUT_KEY in names and int(source[LAYOUT_KEY]) > LAYOUT:
        raise ValueError(f"pose.npz layout {int(source[LAYOUT_KEY])} is newer than this reader (layout {LAYOUT})")
    wanted = None if keys is None else set(keys)
    out: dict[str, Any] = {}
    for name in names:
        base = name[: -len(FIXED_SUFFIX)] if name.endswith(FIXED_SUFFIX) else name
        if base == LAYOUT_KEY or (wanted is not None and base not in wanted and base != SLOTS_KEY):
            continue
        out[base] = decode_landmarks(source[name]) if base != name else np.asarray(source[name])
    return pad_slots(out)
