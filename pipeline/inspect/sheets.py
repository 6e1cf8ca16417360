"""Contact sheets: a few frames of a clip (or of a rejected stretch of a source) with what the
pipeline saw drawn on them — face meshes, body and hand landmarks, part boxes, head pose — and a
timeline of the audio with the transcript's words; the header holds the sync offset and the
clip's figures. ``cnas inspect`` writes them; the run/release report links them.

A sheet is built in two steps: ``SheetData`` (plain arrays in the pixels of the frames drawn) from
a shard sample (``sheet_from_sample``) or from the work dir of a run (``sheet_from_source``), then
``draw_sheet`` renders it with matplotlib. Drawing knows nothing about where the data came from.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from geometry.landmark_codec import decode_pose_member
from schemas import ClipRecord, Transcript
from stages.files import atomic_path
from stages.frames import read_frames_exact

#: Colours of the part boxes (pose.npz part_names), colour-blind-safe (Paul Tol's bright scheme).
PART_COLOURS = {"face": "#4477aa", "mouth": "#ee6677", "left_hand": "#228833", "right_hand": "#ccbb44", "torso": "#aa3377"}
#: Font list: DejaVu for Latin, then CJK faces for Chinese words (Debian's fonts-wqy-microhei; the
#: Makefile installs it). Missing glyphs render as boxes and matplotlib logs a warning.
FONTS = ["DejaVu Sans", "WenQuanYi Micro Hei", "Noto Sans CJK SC", "Droid Sans Fallback"]


@functools.lru_cache(maxsize=1)
def font_family() -> list[str]:
    """The entries of ``FONTS`` matplotlib can use. A CJK font installed after matplotlib built its
    font cache (the usual order on a fresh machine) is registered from its file."""
    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    if not known & set(FONTS[1:]):
        for path in font_manager.findSystemFonts():
            if any(tag in os.path.basename(path).lower() for tag in ("wqy", "notosanscjk", "droidsansfallback")):
                with contextlib.suppress(Exception):  # a broken font file: draw without it
                    font_manager.fontManager.addfont(path)
        known = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in FONTS if f in known] or ["sans-serif"]


@dataclass
class SheetData:
    """What one contact sheet shows; coordinates are pixels of the frames in ``frames``."""

    title: str
    facts: list[str]  # header lines: sync offset/confidence, identity, quality figures
    frames: list[np.ndarray]  # RGB uint8 (H, W, 3)
    times: list[float]  # seconds from the start of the span, one per frame
    duration_s: float
    points: list[dict[str, np.ndarray]] = field(default_factory=list)  # per frame: name -> (N, 2) pixels (NaN rows skipped)
    boxes: list[dict[str, np.ndarray]] = field(default_factory=list)  # per frame: part -> (4,) x0, y0, x1, y1 pixels
    head_pose: list[np.ndarray | None] = field(default_factory=list)  # per frame: yaw, pitch, roll (deg) of the speaker
    nose: list[np.ndarray | None] = field(default_factory=list)  # per frame: nose tip pixel, where the head-pose arrow starts
    words: list[tuple[float, float, str]] = field(default_factory=list)  # seconds from the start of the span
    audio: np.ndarray | None = None  # mono float in [-1, 1]
    sample_rate: int = 16000


def frame_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``num_frames`` (centres of equal parts)."""
    count = max(1, min(count, num_frames))
    return sorted({int((i + 0.5) * num_frames / count) for i in range(count)})


def _to_pixels(xy_norm: np.ndarray, frame_size: tuple[float, float], crop: list[int] | None, out_size: tuple[int, int]) -> np.ndarray:
    """Landmarks normalised to the normalised video → pixels of the drawn frame (a crop of it, resized)."""
    w, h = frame_size
    px = xy_norm[..., :2] * np.array([w, h])
    return _box_to_pixels(px, crop, (w, h), out_size)


def _box_to_pixels(px: np.ndarray, crop: list[int] | None, frame_size: tuple[float, float], out_size: tuple[int, int]) -> np.ndarray:
    """Pixels of the normalised video (any (..., 2k) array of x, y pairs) → pixels of the drawn frame."""
    px = np.asarray(px, np.float64).reshape(*np.shape(px)[:-1], -1, 2)
    if crop is None:
        x0, y0, sx, sy = 0.0, 0.0, out_size[0] / frame_size[0], out_size[1] / frame_size[1]
    else:
        x0, y0, side = crop
        sx, sy = out_size[0] / side, out_size[1] / side
    out = (px - np.array([x0, y0])) * np.array([sx, sy])
    return out.reshape(*out.shape[:-2], -1)


def _pose_overlays(pose: dict[str, np.ndarray], rows: list[int], crop: list[int] | None, out_size: tuple[int, int],
                   face_keys: tuple[str, ...]) -> tuple[list, list, list, list]:
    """Per drawn frame: landmark sets, part boxes, head pose and nose pixel, from pose arrays whose
    row ``r`` is that frame."""
    fw, fh = (float(v) for v in pose["frame_size"])
    names = [str(n) for n in pose.get("part_names", [])]
    points, boxes, heads, noses = [], [], [], []
    for r in rows:
        pts = {}
        for key in face_keys:
            faces = np.asarray(pose[key][r])
            faces = faces[None] if faces.ndim == 2 else faces
            for k, f in enumerate(faces):
                pts[f"{key}{k}"] = _to_pixels(f, (fw, fh), crop, out_size)
        for key in ("body", "left_hand", "right_hand"):
            if key in pose:
                pts[key] = _to_pixels(np.asarray(pose[key][r]), (fw, fh), crop, out_size)
        points.append(pts)
        b = {}
        if "part_boxes" in pose:
            for name, box in zip(names, np.asarray(pose["part_boxes"][r])):
                if np.isfinite(box).all():
                    b[name] = _box_to_pixels(box, crop, (fw, fh), out_size)
        boxes.append(b)
        head = np.asarray(pose["head_pose"][r], np.float64) if "head_pose" in pose else None
        heads.append(head if head is not None and np.isfinite(head).all() else None)
        face = np.asarray(pose["face"][r]) if "face" in pose else None
        nose = _to_pixels(face[1], (fw, fh), crop, out_size) if face is not None and np.isfinite(face[1, :2]).all() else None
        noses.append(nose)
    return points, boxes, heads, noses


def _words(t: Transcript | None, a: float, b: float) -> list[tuple[float, float, str]]:
    """Words of ``t`` overlapping ``[a, b)``, in seconds from ``a``."""
    if t is None:
        return []
    return [(max(w.start_s, a) - a, min(w.end_s, b) - a, w.text) for s in t.segments for w in s.words if w.end_s > a and w.start_s < b]


def _clip_facts(clip: ClipRecord) -> list[str]:
    facts = [f"{clip.video_id}  {clip.start_s:.2f}-{clip.end_s:.2f} s of the source  {clip.num_frames} frames @ {clip.fps:g} fps  "
             f"{clip.width}x{clip.height}" + (f"  crop {clip.crop_box}" if clip.crop_box else "  full frame")]
    if clip.sync:
        s = clip.sync
        facts.append(f"sync: speaker {s.speaker or '?'} = face track {s.face_track}; offset {s.offset_frames:+d} frames "
                     f"(audio shifted {s.audio_shift_frames:+d}), confidence {s.confidence:.2f} [{s.backend}]")
    if clip.identity:
        name = f" ({clip.identity_name})" if clip.identity_name else ""
        dist = f", distance {clip.identity_distance:.2f}" if clip.identity_distance is not None else ""
        facts.append(f"identity {clip.identity}{name}{dist}")
    q = clip.quality
    shown = [f"{k} {q[k]:.3g}" for k in ("face_height_frac", "mean_face_confidence", "mean_mouth_confidence", "face_sharpness",
                                            "speech_ratio", "loudness_lufs", "snr_db") if k in q]
    if shown:
        facts.append("quality: " + ", ".join(shown))
    return facts


def sheet_from_sample(members: dict[str, bytes], count: int = 8) -> SheetData:
    """A contact sheet of one shard sample (its ``json``, ``mp4``, ``wav`` and, when present, ``pose.npz``)."""
    import soundfile as sf

    clip = ClipRecord.model_validate_json(members["json"])
    idx = frame_indices(clip.num_frames, count)
    with tempfile.TemporaryDirectory(prefix="cnas-sheet-") as tmp:
        path = os.path.join(tmp, "clip.mp4")
        with open(path, "wb") as f:
            f.write(members["mp4"])
        frames = read_frames_exact(path, idx, clip.width, clip.height)
    size = (frames[0].shape[1], frames[0].shape[0])
    data = SheetData(title=clip.key, facts=_clip_facts(clip), frames=frames, times=[i / clip.fps for i in idx],
                     duration_s=clip.num_frames / clip.fps)
    if "pose.npz" in members:
        pose = decode_pose_member(members["pose.npz"])  # either pose.npz layout (docs/shard_format.md)
        data.points, data.boxes, data.head_pose, data.nose = _pose_overlays(pose, idx, clip.crop_box, size, ("face",))
    if "wav" in members:
        audio, sr = sf.read(io.BytesIO(members["wav"]), dtype="float32", always_2d=False)
        data.audio, data.sample_rate = audio, sr
    if clip.transcript is not None:  # the clip's words are timed on the clip's audio already
        data.words = _words(clip.transcript, 0.0, data.duration_s)
    return data


def sheet_from_source(video_path: str, audio_path: str | None, pose: dict[str, np.ndarray] | None, transcript: Transcript | None,
                      fps: float, start_s: float, end_s: float, title: str, facts: list[str], width: int, height: int,
                      count: int = 8) -> SheetData:
    """A contact sheet of ``[start_s, end_s)`` of a normalised source (a rejected stretch): every
    face slot of the pose stage is drawn, not only a speaker's."""
    import soundfile as sf

    f0, f1 = round(start_s * fps), max(round(end_s * fps), round(start_s * fps) + 1)
    idx = frame_indices(f1 - f0, count)
    frames = read_frames_exact(video_path, idx, width, height, start=f0)
    size = (frames[0].shape[1], frames[0].shape[0])
    data = SheetData(title=title, facts=facts, frames=frames, times=[i / fps for i in idx], duration_s=(f1 - f0) / fps)
    if pose is not None:
        rows = [f0 + i for i in idx]
        keys = ("faces",) if "faces" in pose else ("face",)
        data.points, data.boxes, data.head_pose, data.nose = _pose_overlays(pose, rows, None, size, keys)
    if audio_path:
        with sf.SoundFile(audio_path) as snd:
            snd.seek(int(start_s * snd.samplerate))
            data.audio = snd.read(int((end_s - start_s) * snd.samplerate), dtype="float32", always_2d=True)[:, 0]
            data.sample_rate = snd.samplerate
    data.words = _words(transcript, start_s, end_s)
    return data


def _style(name: str) -> tuple[str, float]:
    """Colour and marker size of a landmark set."""
    if name.startswith("face"):
        return "#66ccee", 0.6
    if name == "body":
        return "#ee7733", 6.0
    return "#009988", 3.0  # hands


def draw_sheet(data: SheetData, path: str, columns: int = 4) -> str:
    """Render ``data`` as a PNG at ``path`` (written atomically); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(data.frames)
    cols = min(columns, n)
    rows = -(-n // cols)
    h, w = data.frames[0].shape[:2]
    panel_w = 3.0
    panel_h = panel_w * h / w
    # text.parse_math off: transcript words are data, and a "$x$" word would be mathtext (or crash it).
    with plt.rc_context({"font.family": font_family(), "font.size": 8, "text.parse_math": False}):
        fig = plt.figure(figsize=(panel_w * cols, 0.25 * (len(data.facts) + 2) + panel_h * rows + 1.6))
        grid = fig.add_gridspec(rows + 1, cols, height_ratios=[panel_h] * rows + [1.3], hspace=0.25, wspace=0.05)
        fig.suptitle("\n".join([data.title, *data.facts]), x=0.01, ha="left", fontsize=8, y=0.995, va="top")
        for i, frame in enumerate(data.frames):
            ax = fig.add_subplot(grid[i // cols, i % cols])
            ax.imshow(frame)
            ax.set_xlim(0, w), ax.set_ylim(h, 0)
            ax.set_xticks([]), ax.set_yticks([])
            for name, pts in (data.points[i] if data.points else {}).items():
                pts = pts[np.isfinite(pts).all(axis=1)]
                colour, size = _style(name)
                ax.scatter(pts[:, 0], pts[:, 1], s=size, c=colour, linewidths=0)
            for part, (x0, y0, x1, y1) in (data.boxes[i] if data.boxes else {}).items():
                ax.add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1,
                                                          ec=PART_COLOURS.get(part, "white")))
            label = f"t={data.times[i]:.2f} s"
            head = data.head_pose[i] if data.head_pose else None
            if head is not None:
                yaw, pitch, roll = head
                label += f"  yaw {yaw:+.0f}° pitch {pitch:+.0f}° roll {roll:+.0f}°"
                nose = data.nose[i] if data.nose else None
                if nose is not None:  # yaw > 0 turns to the image's right, pitch > 0 tilts up (geometry/head_pose.py)
                    length = 0.15 * w
                    ax.annotate("", xy=(nose[0] + length * np.sin(np.radians(yaw)), nose[1] - length * np.sin(np.radians(pitch))),
                                xytext=(nose[0], nose[1]), arrowprops={"arrowstyle": "->", "color": "#ee3377", "lw": 1.5})
            ax.set_title(label, fontsize=7)
        tl = fig.add_subplot(grid[rows, :])
        if data.audio is not None and len(data.audio):
            t = np.arange(len(data.audio)) / data.sample_rate
            step = max(1, len(data.audio) // 4000)  # a plot of the envelope's shape, not every sample
            tl.plot(t[::step], data.audio[::step], lw=0.4, color="#bbbbbb")
        for a, b, word in data.words:
            tl.axvspan(a, b, 0.55, 0.95, color="#4477aa", alpha=0.25, lw=0)
            tl.text((a + b) / 2, 0.75, word.strip(), ha="center", va="center", fontsize=7, clip_on=True)
        for x in data.times:
            tl.axvline(x, color="#ee6677", lw=0.8)
        tl.set_xlim(0, data.duration_s), tl.set_ylim(-1, 1)
        tl.set_yticks([])
        tl.set_xlabel("seconds (red: frames shown; blue: transcript words; grey: audio)")
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)
    return path
