"""Occlusion: a hand over the speaker's mouth, from the pose stage's part boxes.

A frame is occluded when a hand's box covers at least ``MIN_COVER`` of the mouth box. When the face
mesh is lost under the hand, the mouth box of the last frame that had one stands in (up to a
second), so the frames the hand hides most are not the ones that escape the count.
"""

from __future__ import annotations

import numpy as np

#: Share of the mouth box a hand's box must cover for the frame to count as occluded.
MIN_COVER = 0.3
#: Part order of ``part_boxes`` (schemas.PART_NAMES): face, mouth, left hand, right hand, torso.
MOUTH, LEFT_HAND, RIGHT_HAND = 1, 2, 3


def _cover(mouth: np.ndarray, hand: np.ndarray) -> float:
    if not (np.isfinite(mouth).all() and np.isfinite(hand).all()):
        return 0.0
    iw = max(0.0, min(mouth[2], hand[2]) - max(mouth[0], hand[0]))
    ih = max(0.0, min(mouth[3], hand[3]) - max(mouth[1], hand[1]))
    area = max(1e-6, (mouth[2] - mouth[0]) * (mouth[3] - mouth[1]))
    return iw * ih / area


def occluded_frames(part_boxes: np.ndarray, fps: float) -> np.ndarray:
    """Per frame of a clip (``part_boxes`` (T, parts, 4) in pixels, NaN when absent): whether a hand
    covers the mouth."""
    boxes = np.asarray(part_boxes, np.float64)
    out = np.zeros(len(boxes), bool)
    last, last_t = None, -10**9
    hold = max(1, round(fps))
    for t, frame in enumerate(boxes):
        mouth = frame[MOUTH]
        if np.isfinite(mouth).all():
            last, last_t = mouth, t
        elif last is not None and t - last_t <= hold:
            mouth = last
        out[t] = max(_cover(mouth, frame[LEFT_HAND]), _cover(mouth, frame[RIGHT_HAND])) >= MIN_COVER
    return out


def occlusion_ratio(part_boxes: np.ndarray | None, fps: float) -> float | None:
    """Share of a clip's frames with a hand over the mouth (None without part boxes)."""
    if part_boxes is None or len(part_boxes) == 0:
        return None
    return round(float(occluded_frames(part_boxes, fps).mean()), 4)
