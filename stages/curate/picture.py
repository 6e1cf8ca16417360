"""Picture quality of a clip's crop: BRISQUE, brightness, black borders, picture-in-picture.

- BRISQUE (Mittal, Moorthy & Bovik 2012) through the ``brisque`` package, whose SVM model ships in
  its wheel: 0 (pristine) to ~100 (heavily distorted); blur and compression raise it.
- Brightness: mean luma (BT.601) of the crop, 0–255.
- Black borders: rows and columns at the frame's edges that stay black (luma < 24, nearly flat) in
  every sampled frame (letterbox, pillarbox); what matters is the share of the crop they cover.
- Picture-in-picture: a rectangle of straight edges inside the frame that stays put while the
  picture changes (a sign-language inset, a second studio window): long horizontal and vertical
  edge runs, present in most sampled frames, that close a box of 2–40 % of the frame away from its
  borders.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

#: Luma below which a row or column counts as black border, and its largest spread.
BLACK_LUMA, BLACK_SPREAD = 24.0, 6.0
#: Short side the crop is resized to for BRISQUE (its natural-scene statistics depend on scale).
BRISQUE_SIDE = 256


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def crop_of(rgb: np.ndarray, crop_box: list[int] | None) -> np.ndarray:
    if crop_box is None:
        return rgb
    x, y, side = crop_box
    return rgb[max(0, y):y + side, max(0, x):x + side]


def picture_area(rgb: np.ndarray, crop_box: list[int] | None, borders: tuple[int, int, int, int]) -> np.ndarray:
    """The crop of a frame without the black ``borders`` (top, bottom, left, right) inside it: what
    brightness and BRISQUE should judge (bars would read as dark, flat, "distorted" picture)."""
    h, w = rgb.shape[:2]
    top, bottom, left, right = borders
    x0, y0, x1, y1 = (0, 0, w, h) if crop_box is None else (crop_box[0], crop_box[1], crop_box[0] + crop_box[2], crop_box[1] + crop_box[2])
    x0, y0, x1, y1 = max(x0, left, 0), max(y0, top, 0), min(x1, w - right), min(y1, h - bottom)
    return rgb[y0:y1, x0:x1] if x1 - x0 >= 16 and y1 - y0 >= 16 else crop_of(rgb, crop_box)


@functools.lru_cache(maxsize=1)
def _brisque():
    from brisque import BRISQUE

    return BRISQUE(url=False)


def brisque_score(crop_rgb: np.ndarray) -> float | None:
    """BRISQUE of an RGB crop with its short side at ``BRISQUE_SIDE`` px; None when it cannot be
    computed (a flat image)."""
    import cv2

    h, w = crop_rgb.shape[:2]
    f = BRISQUE_SIDE / min(h, w)  # the short side at BRISQUE_SIDE, the aspect kept
    img = cv2.resize(crop_rgb, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    try:
        # brisque 0.2 converts 1-element arrays with float() (numpy's DeprecationWarning) and divides
        # by zero on flat patches (RuntimeWarning); a NaN score is handled below
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            score = float(_brisque().score(img))
    except Exception:  # a flat frame has no statistics to fit
        return None
    return score if np.isfinite(score) else None


def border_sizes(frames: list[np.ndarray]) -> tuple[int, int, int, int]:
    """Black border (top, bottom, left, right) in pixels common to every frame."""
    sizes = []
    for rgb in frames:
        y = luma(rgb.astype(np.float32))
        rows = (y.mean(axis=1) < BLACK_LUMA) & (y.std(axis=1) < BLACK_SPREAD)
        cols = (y.mean(axis=0) < BLACK_LUMA) & (y.std(axis=0) < BLACK_SPREAD)
        sizes.append((_run(rows), _run(rows[::-1]), _run(cols), _run(cols[::-1])))
    return tuple(int(min(s[i] for s in sizes)) for i in range(4)) if sizes else (0, 0, 0, 0)


def _run(flags: np.ndarray) -> int:
    """Length of the run of True at the start of ``flags``."""
    off = np.flatnonzero(~flags)
    return int(off[0]) if len(off) else len(flags)


def border_in_crop(borders: tuple[int, int, int, int], crop_box: list[int] | None, width: int, height: int) -> float:
    """Share of the crop's area covered by the black borders."""
    top, bottom, left, right = borders
    x0, y0, x1, y1 = (0, 0, width, height) if crop_box is None else (crop_box[0], crop_box[1], crop_box[0] + crop_box[2], crop_box[1] + crop_box[2])
    inside = np.ones((max(1, y1 - y0), max(1, x1 - x0)), bool)
    inside[: max(0, top - y0)] = False
    inside[max(0, height - bottom - y0):] = False
    inside[:, : max(0, left - x0)] = False
    inside[:, max(0, width - right - x0):] = False
    return round(1.0 - float(inside.mean()), 4)


def picture_in_picture(frames: list[np.ndarray], min_share: float = 0.6) -> float:
    """Area share (of the frame) of the largest persistent inset rectangle, 0 when there is none.

    Edges are taken on a 256-px grey copy; a row (column) segment is an inset side when a straight
    run of edge pixels longer than 8 % of the frame's width (height) is there in ``min_share`` of
    the frames. Two horizontal and two vertical sides that meet (within 3 px) close a box."""
    import cv2

    if len(frames) < 2:
        return 0.0
    acc = None
    for rgb in frames:
        h, w = rgb.shape[:2]
        f = 256 / max(h, w)
        g = cv2.cvtColor(cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        e = cv2.Canny(g, 60, 150) > 0
        acc = e.astype(np.float32) if acc is None else acc + e
    steady = acc / len(frames) >= min_share
    H, W = steady.shape
    # dilate by a pixel so a line that wobbles by one row still reads as one run
    steady = cv2.dilate(steady.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    hs = _runs(steady, int(0.08 * W))          # (row, x0, x1)
    vs = _runs(steady.T, int(0.08 * H))        # (col, y0, y1)
    best = 0.0
    for i, (ya, ax0, ax1) in enumerate(hs):
        for yb, bx0, bx1 in hs[i + 1:]:
            if yb - ya < 0.1 * H:
                continue
            x0, x1 = max(ax0, bx0), min(ax1, bx1)
            if x1 - x0 < 0.1 * W:
                continue
            left = any(abs(c - x0) <= 3 and c0 <= ya + 3 and c1 >= yb - 3 for c, c0, c1 in vs)
            right = any(abs(c - x1) <= 3 and c0 <= ya + 3 and c1 >= yb - 3 for c, c0, c1 in vs)
            touches = ya <= 3 or yb >= H - 4 or x0 <= 3 or x1 >= W - 4
            share = (yb - ya) * (x1 - x0) / (H * W)
            if left and right and not touches and 0.02 <= share <= 0.4:
                best = max(best, share)
    return round(best, 4)


def _runs(mask: np.ndarray, min_len: int) -> list[tuple[int, int, int]]:
    """Maximal runs of True along each row of ``mask`` at least ``min_len`` long, merging rows
    next to each other into one line (the middle row kept)."""
    out: list[tuple[int, int, int]] = []
    for r, row in enumerate(mask):
        padded = np.concatenate([[False], row, [False]])
        d = np.diff(padded.astype(np.int8))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        for a, b in zip(starts, ends):
            if b - a >= min_len:
                if out and r - out[-1][0] <= 2 and abs(out[-1][1] - a) <= 3 and abs(out[-1][2] - b) <= 3:
                    continue  # the same line, a row lower
                out.append((r, int(a), int(b)))
    return out
