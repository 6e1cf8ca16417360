"""The curate stage: every broadcast check on a video's cut clips, from a few sampled frames each.

Per clip, one seek-and-decode of the normalised video fetches the frames the checks look at (text
at ``ocr_every_s``, crop hashes at ``video_hz``, the camera's frame pairs); the landmarks and head
pose come from the pose stage and the clip's audio from the normalised wav. The scores go to the
clip's ``quality``, the gates to its ``checks`` (a failed gate rejects the clip with its reason),
the text boxes, subtitle text and fingerprint to its ``curation`` record. Rebroadcast groups are
formed later, across videos and runs (``duplicates.group``, called by the pipeline).
"""

from __future__ import annotations

import numpy as np

from schemas import ClipRecord, ClipSet, GateCheck, NormalizedMedia, RejectSpan
from schemas.curation import ClipCuration

from ..frames import read_clip_frames
from ..pose import slice_pose
from .fingerprint import make_fingerprint, video_hash
from .motion import camera_scores, head_scores, pair_motion, pair_offsets
from .occlusion import occlusion_ratio
from .options import CurateOptions
from .picture import border_in_crop, border_sizes, brisque_score, crop_of, luma, picture_area, picture_in_picture
from .text import place_boxes, subtitle_cer, subtitle_lines, text_reader, transcript_text

#: Frames of a clip whose crop BRISQUE scores (~0.04 s each at 256 px); the clip gets their mean.
BRISQUE_FRAMES = 3


def _offsets_every(num_frames: int, fps: float, every_s: float, phase: float = 0.5) -> list[int]:
    out, k = [], 0
    while (t := round((k + phase) * every_s * fps)) < num_frames:
        out.append(t)
        k += 1
    return out or [num_frames // 2]


def curate_clip(clip: ClipRecord, video_path: str, audio: np.ndarray | None, sr: int, media: NormalizedMedia,
                view: dict[str, np.ndarray] | None, opts: CurateOptions) -> tuple[dict[str, float], dict[str, GateCheck], ClipCuration]:
    """Scores, gate verdicts and the curation record of one clip. ``view`` is the clip's slice of
    the pose arrays (the speaker's face), ``audio`` the video's mono samples at ``sr`` (float in
    [-1, 1], or the wav's int16 memory map)."""
    fps, n, w, h = media.fps, clip.num_frames, media.width, media.height
    ocr_at = _offsets_every(n, fps, opts.ocr_every_s) if opts.ocr else []
    hash_at = _offsets_every(n, fps, 1.0 / opts.video_hash_hz, phase=0.0) if opts.fingerprint else []
    pairs = pair_offsets(n, fps, opts.camera_pairs, opts.camera_gap_s)
    look_at = ocr_at or _offsets_every(n, fps, 1.0)  # the picture checks' frames when OCR is off
    wanted = sorted(set(ocr_at) | set(hash_at) | set(look_at) | {i for p in pairs for i in p})
    frames = dict(read_clip_frames(video_path, w, h, clip.start_s, wanted))
    boxes = view["part_boxes"] if view is not None and "part_boxes" in view else None
    q: dict[str, float] = {}
    cur = ClipCuration()

    # burned-in text
    if opts.ocr:
        reader = text_reader()
        for i in ocr_at:
            if i in frames:
                mouth = boxes[min(i, len(boxes) - 1), 1] if boxes is not None else None
                cur.text_boxes += place_boxes(reader.read(frames[i], opts.ocr_min_score), clip.start_s + i / fps, clip.crop_box, mouth, w, h)
        q["text_lines"] = float(len(cur.text_boxes))
        q["text_in_crop"] = max((b.in_crop for b in cur.text_boxes), default=0.0)
        read = sum(i in frames for i in ocr_at)  # share of the OCR frames with a line on the mouth
        q["text_over_mouth"] = round(len({b.time_s for b in cur.text_boxes if b.over_mouth}) / read, 4) if read else 0.0
        lines = subtitle_lines(cur.text_boxes, w, h)
        if lines:
            cur.subtitle_text = " / ".join(lines)
            cer = subtitle_cer(lines, transcript_text(clip.transcript)) if clip.transcript else None
            if cer is not None:
                cur.subtitle_cer = round(cer, 4)
                q["subtitle_cer"] = cur.subtitle_cer
                if cer > opts.max_subtitle_cer:
                    cur.flags.append("subtitle_mismatch")
        if q["text_in_crop"] >= 0.1:
            cur.flags.append("text_in_crop")

    # motion
    if view is not None and "face" in view:
        q.update(head_scores(view["face"], view.get("head_pose"), w, h))
    motions = [pair_motion(frames[a], frames[b], boxes[a, 0] if boxes is not None else None) for a, b in pairs if a in frames and b in frames]
    if motions:  # the pairs' real gap: camera_gap_s rounded to whole frames
        q.update(camera_scores(motions, (pairs[0][1] - pairs[0][0]) / fps, w, h))

    # picture
    seen = [frames[i] for i in look_at if i in frames]
    if seen:
        borders = border_sizes(seen)
        q["border_in_crop"] = border_in_crop(borders, clip.crop_box, w, h)
        picture = [picture_area(f, clip.crop_box, borders) for f in seen]  # the crop without black bars
        q["brightness"] = round(float(np.mean([luma(c.astype(np.float32)).mean() for c in picture])), 2)
        picks = [picture[round(k)] for k in np.linspace(0, len(picture) - 1, BRISQUE_FRAMES + 2)[1:-1]]  # inner frames
        scores = [s for s in (brisque_score(c) for c in picks) if s is not None]
        if scores:
            q["brisque"] = round(float(np.mean(scores)), 3)
        pip_frames = [frames[i] for i in sorted(set(look_at) | set(hash_at)) if i in frames]
        q["picture_in_picture"] = picture_in_picture(pip_frames)
        if q["picture_in_picture"] > 0:
            cur.flags.append("picture_in_picture")

    # occlusion
    if boxes is not None:
        ratio = occlusion_ratio(boxes, fps)
        if ratio is not None:
            q["hand_over_mouth"] = ratio

    # fingerprint
    if opts.fingerprint and audio is not None:
        hashes = [video_hash(crop_of(frames[i], clip.crop_box)) for i in hash_at if i in frames]
        a0 = round(clip.start_s * sr)
        samples = np.asarray(audio[a0:a0 + clip.num_audio_samples])
        if samples.dtype == np.int16:  # the wav's memory map (the pipeline); float samples pass as they are
            samples = samples.astype(np.float32) / 32768.0
        cur.fingerprint = make_fingerprint(hashes, opts.video_hash_hz, samples, sr)
    return q, gates(q, opts), cur


def gates(q: dict[str, float], opts: CurateOptions) -> dict[str, GateCheck]:
    """Each curation gate's verdict on a clip's scores, in the order applied (a score that could
    not be measured is ``unverified`` and passes). The camera comes before the head: a camera
    move moves the head in the frame too, and the clip is rejected for its cause."""
    def most(name: str, reason: str, limit: float) -> GateCheck:
        return GateCheck.measure(q.get(name), limit, reason, at_least=False)

    out: dict[str, GateCheck] = {}
    if opts.ocr and opts.text_policy != "flag":
        name = "text_over_mouth" if opts.text_policy == "mouth" else "text_in_crop"
        out[name] = most(name, "burned_in_text", 0.0 if opts.text_policy == "mouth" else 0.1 - 1e-9)
    out["camera_pan"] = most("camera_pan", "camera_motion", opts.max_camera_pan)
    out["camera_zoom"] = most("camera_zoom", "camera_motion", opts.max_camera_zoom)
    out["camera_shake"] = most("camera_shake", "camera_motion", opts.max_camera_shake)
    out["head_movement_avg"] = most("head_movement_avg", "head_motion", opts.max_head_movement)
    out["head_rotation_avg"] = most("head_rotation_avg", "head_motion", opts.max_head_rotation_deg)
    out["brisque"] = most("brisque", "low_picture_quality", opts.max_brisque)
    out["brightness"] = GateCheck.measure(q.get("brightness"), opts.min_brightness, "too_dark")
    out["border_in_crop"] = most("border_in_crop", "letterboxed", opts.max_border_in_crop)
    if opts.pip_reject:
        out["picture_in_picture"] = most("picture_in_picture", "picture_in_picture", 0.0)
    out["hand_over_mouth"] = most("hand_over_mouth", "hand_over_face", opts.max_occluded_ratio)
    return out


def curate_clip_set(video_path: str, audio: np.ndarray | None, sr: int, media: NormalizedMedia, clip_set: ClipSet,
                    pose: dict[str, np.ndarray] | None, opts: CurateOptions) -> ClipSet:
    """Curate every clip of a video's clip set (a deep copy is returned): scores into ``quality``,
    verdicts into ``checks``, the ``curation`` record; clips failing a gate become rejects (unless
    ``opts.reject`` is off: an audit run keeps them with their failed checks)."""
    out = clip_set.model_copy(deep=True)
    kept = []
    for clip in out.clips:
        f0 = round(clip.start_s * media.fps)
        view = slice_pose(pose, f0, f0 + clip.num_frames, clip.sync.face_track if clip.sync else None) if pose is not None else None
        q, checks, cur = curate_clip(clip, video_path, audio, sr, media, view, opts)
        clip.quality.update(q)
        clip.checks.update(checks)
        clip.curation = cur
        failed = next((c.reason for c in checks.values() if c.verdict == "fail"), None)
        if failed and opts.reject:
            out.rejects[failed] = out.rejects.get(failed, 0) + 1
            out.rejected_s[failed] = round(out.rejected_s.get(failed, 0.0) + clip.end_s - clip.start_s, 3)
            out.reject_spans.append(RejectSpan(start_s=clip.start_s, end_s=clip.end_s, reason=failed, face_track=clip.face_track))
            continue
        kept.append(clip)
    out.clips = kept
    return out
