"""Clip selection: shots × speech turns of the main speaker × frames where that speaker is in
view, cut to [min, max] seconds, then quality filters. Every rejection is counted by reason.

Pure functions over arrays and records (no decoding, no Ray): the pose stage already measured
per-frame visibility, people count, face track and face sharpness.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pydantic import Field

from schemas import ShotList, Transcript
from schemas.settings import Settings


class SelectOptions(Settings):
    """How clips are selected and cropped (part of the clip stage's options, config section ``clips``)."""

    min_clip_s: float = Field(2.0, gt=0)
    max_clip_s: float = Field(10.0, gt=0)
    turn_gap_s: float = Field(0.6, ge=0, description="pauses shorter than this stay inside one speech turn")
    turn_pad_s: float = Field(0.2, ge=0)
    min_face_height_frac: float = Field(0.08, ge=0, le=1, description="face box height / frame height")
    max_yaw_deg: float = Field(35.0, gt=0, le=90, description="median |yaw| of the head over the clip (0 = frontal); more is non_frontal")
    max_pitch_deg: float = Field(30.0, gt=0, le=90, description="median |pitch| of the head over the clip; more is non_frontal")
    min_face_px: int = Field(160, ge=0, description="face box height in pixels of the normalised video (DECA and the 512-px PAHA crops need detail)")
    min_face_confidence: float = Field(0.6, ge=0, le=1)
    min_torso_confidence: float = Field(0.3, ge=0, le=1)
    min_speech_ratio: float = Field(0.3, ge=0, le=1, description="share of the clip covered by the main speaker's words")
    min_face_sharpness: float = Field(15.0, ge=0, description="variance of the Laplacian of the face crop (grey levels²)")
    crop: str = Field("full", pattern=r"^(full|upper_body|face)$", description="shard video: full frame, upper-body square (PAHA), face (FLAME)")
    upper_body_scale: float = Field(2.6, gt=0, description="upper-body crop: square side / face-and-torso box size")
    face_scale: float = Field(1.25, gt=0, description="face crop: square side / face box size (DECA's 1.25)")
    upper_body_centre_y: float = Field(0.45, ge=0, le=1, description="upper-body crop: centre this far down the square from the top of the head")


@dataclass
class Selection:
    windows: list[tuple[int, int]] = field(default_factory=list)  # (first frame, frame count)
    crops: list[tuple[int, int, int] | None] = field(default_factory=list)  # (x, y, side) or None = full frame
    rejects: Counter = field(default_factory=Counter)  # reason -> clips (or stretches) rejected
    rejected_s: Counter = field(default_factory=Counter)  # reason -> seconds rejected


def speech_turns(t: Transcript | None, num_frames: int, fps: float, opts: SelectOptions) -> list[tuple[int, int]]:
    """Frame ranges where the main speaker talks (whole video when there is no transcript)."""
    if t is None:
        return [(0, num_frames)]
    words = sorted((w.start_s, w.end_s) for s in t.segments for w in s.words if w.speaker == t.main_speaker)
    turns: list[list[float]] = []
    for a, b in words:
        if turns and a - turns[-1][1] <= opts.turn_gap_s:
            turns[-1][1] = max(turns[-1][1], b)
        else:
            turns.append([a, b])
    out: list[tuple[int, int]] = []
    for a, b in turns:
        f0 = max(0, int(np.floor((a - opts.turn_pad_s) * fps)))
        f1 = min(num_frames, int(np.ceil((b + opts.turn_pad_s) * fps)))
        if out and f0 <= out[-1][1]:  # padding made two turns touch: one turn (clips never share frames)
            out[-1] = (out[-1][0], max(out[-1][1], f1))
        elif f1 > f0:
            out.append((f0, f1))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2], edges[1::2]))


def select_clips(
    num_frames: int, fps: float, width: int, height: int, shots: ShotList | None, transcript: Transcript | None,
    pose: dict[str, np.ndarray] | None, opts: SelectOptions = SelectOptions(),
) -> Selection:
    sel = Selection()
    turns = speech_turns(transcript, num_frames, fps, opts)
    if transcript is not None and not turns:
        sel.rejects["too_little_speech"] += 1
        sel.rejected_s["too_little_speech"] += num_frames / fps
        return sel
    cuts = sorted({s.start_frame for s in shots.shots} | {num_frames}) if shots else [0, num_frames]
    pieces = []
    for a, b in turns:  # split every turn at the cuts inside it
        inner = [c for c in cuts if a < c < b]
        bounds = [a, *inner, b]
        pieces += [(x, y) for x, y in zip(bounds, bounds[1:]) if y > x]
    good = np.ones(num_frames, bool)
    reason = np.full(num_frames, "", object)
    if pose is not None:
        people, present, track = pose["num_people"], pose["part_present"], pose["face_track"]
        several = people > 1
        offscreen = ~several & ~present[:, 0]
        reason[several], reason[offscreen] = "several_people", "off_screen_speaker"
        good = ~several & ~offscreen
    min_f, max_f = round(opts.min_clip_s * fps), round(opts.max_clip_s * fps)
    for a, b in pieces:
        for r in set(reason[a:b]) - {""}:  # frames of the turn lost to a filter
            n = int(np.sum(reason[a:b] == r))
            sel.rejected_s[r] += n / fps
            sel.rejects[r] += 1
        runs = _runs(good[a:b])
        if pose is not None:  # one identity per clip: split where the face track changes
            split = []
            for x, y in runs:
                tr = pose["face_track"][a + x : a + y]
                change = np.flatnonzero(tr[1:] != tr[:-1]) + 1
                bounds = [x, *(x + change), y]
                split += list(zip(bounds, bounds[1:]))
            runs = split
        for x, y in runs:
            x, y = a + x, a + y
            n = y - x
            if n < min_f:
                sel.rejects["too_short"] += 1
                sel.rejected_s["too_short"] += n / fps
                continue
            parts = int(np.ceil(n / max_f))
            if n / parts < min_f:  # equal parts would be too short: max-length clips, the rest rejected
                parts -= 1
                rest = n - parts * max_f
                sel.rejects["too_short"] += 1
                sel.rejected_s["too_short"] += rest / fps
                y = x + parts * max_f
            edges = np.linspace(x, y, parts + 1).round().astype(int)
            for f0, f1 in zip(edges, edges[1:]):
                why = quality_reject(f0, f1, height, transcript, pose, fps, opts)
                if why:
                    sel.rejects[why] += 1
                    sel.rejected_s[why] += (f1 - f0) / fps
                    continue
                sel.windows.append((int(f0), int(f1 - f0)))
                sel.crops.append(crop_box(pose, f0, f1, width, height, opts))
    return sel


def quality_reject(f0: int, f1: int, height: int, t: Transcript | None, pose: dict | None, fps: float, opts: SelectOptions) -> str | None:
    """The first quality filter a candidate clip fails, or None."""
    if pose is not None:
        conf = pose["part_confidences"][f0:f1]
        boxes = pose["part_boxes"][f0:f1, 0]
        face_h = np.nanmedian(boxes[:, 3] - boxes[:, 1]) if not np.isnan(boxes[:, 0]).all() else 0.0
        if face_h / height < opts.min_face_height_frac:
            return "face_too_small"
        if face_h < opts.min_face_px:
            return "face_too_small_px"
        if conf[:, 0].mean() < opts.min_face_confidence or conf[:, 4].mean() < opts.min_torso_confidence:
            return "low_landmark_confidence"
        head = pose["head_pose"][f0:f1] if "head_pose" in pose else None  # pose files before head pose lack it
        if head is not None and not np.isnan(head[:, 0]).all():
            if np.nanmedian(np.abs(head[:, 0])) > opts.max_yaw_deg or np.nanmedian(np.abs(head[:, 1])) > opts.max_pitch_deg:
                return "non_frontal"
        sharp = pose.get("face_sharpness")
        if sharp is not None and np.nanmedian(sharp[f0:f1]) < opts.min_face_sharpness:
            return "motion_blur"
    if t is not None:
        a, b = f0 / fps, f1 / fps
        spoken = sum(max(0.0, min(b, w.end_s) - max(a, w.start_s)) for s in t.segments for w in s.words if w.speaker == t.main_speaker)
        if spoken / (b - a) < opts.min_speech_ratio:
            return "too_little_speech"
    return None


def crop_box(pose: dict | None, f0: int, f1: int, width: int, height: int, opts: SelectOptions) -> tuple[int, int, int] | None:
    """A fixed square crop for the clip from the median (smoothed) boxes: (x, y, side), even numbers."""
    if opts.crop == "full" or pose is None:
        return None
    face = np.nanmedian(pose["part_boxes"][f0:f1, 0], axis=0)
    if np.isnan(face).any():
        return None
    if opts.crop == "face":
        cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
        side = max(face[2] - face[0], face[3] - face[1]) * opts.face_scale
    else:  # upper body: face and shoulders, head near the top third
        torso = np.nanmedian(pose["part_boxes"][f0:f1, 4], axis=0)
        boxes = [face] + ([torso] if not np.isnan(torso).any() else [])
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1 = max(b[2] for b in boxes)
        side = (face[3] - face[1]) * opts.upper_body_scale
        side = max(side, x1 - x0)
        cx, cy = (x0 + x1) / 2, y0 + side * opts.upper_body_centre_y
    side = int(min(side, width, height)) // 2 * 2
    x = int(np.clip(cx - side / 2, 0, width - side)) // 2 * 2
    y = int(np.clip(cy - side / 2, 0, height - side)) // 2 * 2
    return (x, y, side)
