"""Clip selection: shots × speech turns × frames where the speaker is on screen and in sync, cut to
[min, max] seconds, then the clip-level sync decision and quality filters. Every rejection is
counted by reason.

With the sync stage, every diarized speaker's turns are candidates and the face whose lips move
with the audio is the speaker (two anchors at one desk both give clips); speech with no in-sync
face is ``voice_over``. Without it, the main speaker's turns with exactly one visible face.

Pure functions over arrays and records (no decoding, no Ray): the pose stage already measured
per-frame visibility, people count, face tracks and face sharpness; the sync stage the per-track
lip/audio evidence.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pydantic import Field

from schemas import ClipSync, GateCheck, RejectSpan, ShotList, Transcript
from schemas.settings import Settings

from .pose import slice_pose
from .sync import SyncOptions, score, track_series


class SelectOptions(Settings):
    """How clips are selected and cropped (part of the clip stage's options, config section ``clips``)."""

    min_clip_s: float = Field(2.0, gt=0)
    max_clip_s: float = Field(10.0, gt=0)
    turn_gap_s: float = Field(1.5, ge=0, description="pauses shorter than this stay inside one speech turn (a reader's breath between sentences; real clips lost 1–2-s remnants as too_short at 0.6)")
    turn_pad_s: float = Field(0.2, ge=0)
    min_face_height_frac: float = Field(0.08, ge=0, le=1, description="face box height / frame height")
    max_yaw_deg: float = Field(35.0, gt=0, le=90, description="median |yaw| of the head over the clip (0 = frontal); more is non_frontal")
    max_pitch_deg: float = Field(30.0, gt=0, le=90, description="median |pitch| of the head over the clip; more is non_frontal")
    min_face_px: int = Field(96, ge=0, description="face box height in pixels of the normalised video (DECA was trained on VoxCeleb2 crops, faces ~140 px; raise it for 512-px PAHA crops)")
    min_face_confidence: float = Field(0.6, ge=0, le=1)
    min_torso_confidence: float = Field(0.3, ge=0, le=1)
    min_speech_ratio: float = Field(0.3, ge=0, le=1, description="share of the clip covered by the main speaker's words")
    max_flagged_speech_share: float = Field(0.5, ge=0, le=1, description="more of the clip's speech in flagged ASR segments (loops, hallucinations) is asr_unreliable")
    min_face_sharpness: float = Field(25.0, ge=0, description="variance of the Laplacian of the face crop at 96 px high (grey levels²): real faces 50–930, a Gaussian blur of 6 px 7–14")
    crop: str = Field("upper_body", pattern=r"^(full|upper_body|face)$", description="shard video: upper-body square (default: what PAHA trains on), full frame, face (FLAME)")
    upper_body_scale: float = Field(2.6, gt=0, description="upper-body crop: square side / face-and-torso box size")
    face_scale: float = Field(1.25, gt=0, description="face crop: square side / face box size (DECA's 1.25)")
    upper_body_centre_y: float = Field(0.45, ge=0, le=1, description="upper-body crop: centre this far down the square from the top of the head")


@dataclass
class Selection:
    windows: list[tuple[int, int]] = field(default_factory=list)  # (first frame, frame count)
    crops: list[tuple[int, int, int] | None] = field(default_factory=list)  # (x, y, side) or None = full frame
    syncs: list[ClipSync | None] = field(default_factory=list)  # speaker and sync of each window (None: no sync stage)
    rejects: Counter = field(default_factory=Counter)  # reason -> clips (or stretches) rejected
    rejected_s: Counter = field(default_factory=Counter)  # reason -> seconds rejected
    speaker_faces: dict[str, set[int]] = field(default_factory=dict)  # diarized speaker -> face tracks in sync with it
    spans: list[tuple[int, int, str, int | None]] = field(default_factory=list)  # rejected (first, end frame, reason, track)
    checks: list[dict[str, GateCheck]] = field(default_factory=list)  # every gate's verdict on each window

    def reject(self, why: str, f0: int, f1: int, fps: float, track: int | None = None) -> None:
        """Count frames ``[f0, f1)`` as one rejected clip (or stretch) for ``why`` and keep the span
        (``cnas inspect`` shows examples of each reason)."""
        self.rejects[why] += 1
        self.rejected_s[why] += (f1 - f0) / fps
        self.spans.append((int(f0), int(f1), why, track))


Turn = tuple[int, int, "str | None"]  # first frame, end frame, diarized speaker


#: Rejected spans kept per reason in a video's clip set (the longest): examples, not an inventory.
SPANS_PER_REASON = 5


def reject_examples(spans: list[tuple[int, int, str, int | None]], fps: float, per_reason: int = SPANS_PER_REASON) -> list[RejectSpan]:
    """The longest ``per_reason`` rejected spans of each reason, in time order, as records."""
    by_reason: dict[str, list] = {}
    for s in spans:
        by_reason.setdefault(s[2], []).append(s)
    kept = [s for group in by_reason.values() for s in sorted(group, key=lambda s: s[0] - s[1])[:per_reason]]
    return [RejectSpan(start_s=round(a / fps, 3), end_s=round(b / fps, 3), reason=why, face_track=track)
            for a, b, why, track in sorted(kept)]


def speech_turns(t: Transcript | None, num_frames: int, fps: float, opts: SelectOptions, every_speaker: bool = False) -> list[Turn]:
    """Frame ranges of speech (the whole video when there is no transcript): the main speaker's
    turns, or with ``every_speaker`` the speech of everyone (the sync stage then finds who is on
    screen, and the clips split where the speaking face changes, not where diarization changes
    its label: on real voices it splits one speaker into several). Words closer than
    ``turn_gap_s`` form a turn, labelled with the speaker who says most of it; turns never share
    frames (padding that makes two touch is split between them)."""
    if t is None:
        return [(0, num_frames, None)]
    words = sorted((w.start_s, w.end_s, w.speaker) for s in t.segments for w in s.words
                   if every_speaker or w.speaker == t.main_speaker)
    turns: list[list] = []  # start, end, {speaker: seconds}
    for a, b, who in words:
        if turns and (every_speaker or who in turns[-1][2]) and a - turns[-1][1] <= opts.turn_gap_s:
            turns[-1][1] = max(turns[-1][1], b)
        else:
            turns.append([a, b, Counter()])
        turns[-1][2][who] += b - a
    out: list[Turn] = []
    for a, b, said in turns:
        who = max(said, key=lambda k: (said[k], str(k)))
        f0 = max(0, int(np.floor((a - opts.turn_pad_s) * fps)))
        f1 = min(num_frames, int(np.ceil((b + opts.turn_pad_s) * fps)))
        if out and f0 <= out[-1][1]:
            if out[-1][2] == who:  # padding made two turns of one speaker touch: one turn
                out[-1] = (out[-1][0], max(out[-1][1], f1), who)
                continue
            mid = max(out[-1][0] + 1, min(f1 - 1, (f0 + out[-1][1]) // 2))  # two speakers: split the overlap
            out[-1] = (out[-1][0], mid, out[-1][2])
            f0 = mid
        if f1 > f0:
            out.append((f0, f1, who))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2], edges[1::2]))


def _value_runs(values: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of runs of equal values."""
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    bounds = [0, *change, len(values)]
    return list(zip(bounds, bounds[1:]))


def active_faces(num_frames: int, pose: dict[str, np.ndarray] | None, sync: dict[str, np.ndarray] | None,
                 sync_opts: SyncOptions | None) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the face track of the speaker (-1: none) and why a frame has none.

    With sync evidence: of the faces on screen, the track whose lips agree best with the audio
    (the windows of ``sync.speaking_frames``), else the primary face; whether that face really
    speaks is decided per clip (``sync_decision``: a 3-s window says too little on real faces).
    Frames with no face are ``off_screen_speaker``. Without sync: the tracked primary face when it
    is the only person (else ``several_people``)."""
    active = np.full(num_frames, -1, np.int64)
    reason = np.full(num_frames, "", object)
    if pose is None:
        return np.zeros(num_frames, np.int64), reason  # no pose: the whole frame, one "face"
    people, present = pose["num_people"], pose["part_present"]
    # the cascade did not look there (no large face, no speech or a short shot in its cheap passes)
    outside = np.asarray(pose["skipped"], bool) if "skipped" in pose else np.zeros(num_frames, bool)
    if sync is None:
        several = people > 1
        offscreen = ~several & ~present[:, 0]
        reason[several], reason[offscreen] = "several_people", "off_screen_speaker"
        reason[outside] = "outside_candidates"
        ok = ~several & ~offscreen
        active[ok] = pose["face_track"][ok]
        return active, reason
    conf, ids = sync["speaking_conf"], sync["faces_track"]
    rows = np.arange(num_frames)
    best = np.where(ids >= 0, conf, -1.0).argmax(axis=1)
    scored = (conf[rows, best] > 0) & (ids[rows, best] >= 0)
    active[scored] = ids[rows, best][scored]
    first = (ids >= 0).argmax(axis=1)  # the primary slot when it holds a face
    unscored = ~scored & (ids >= 0).any(axis=1)
    active[unscored] = ids[rows, first][unscored]
    reason[active < 0] = "off_screen_speaker"
    reason[outside & (active < 0)] = "outside_candidates"
    return active, reason


def select_clips(
    num_frames: int, fps: float, width: int, height: int, shots: ShotList | None, transcript: Transcript | None,
    pose: dict[str, np.ndarray] | None, opts: SelectOptions = SelectOptions(),
    sync: dict[str, np.ndarray] | None = None, sync_opts: SyncOptions | None = None,
) -> Selection:
    """Clip windows: speech turns × shots × frames with one in-sync (or, without the sync stage,
    one visible) speaker, cut to ``[min_clip_s, max_clip_s]``, then the clip-level sync decision and
    the quality filters. ``sync`` holds the sync stage's arrays (``sync.npz``)."""
    sel = Selection()
    sync_opts = sync_opts or SyncOptions()
    if pose is None:
        sync = None  # sync evidence lives in the face tracks of the pose stage
    turns = speech_turns(transcript, num_frames, fps, opts, every_speaker=sync is not None)
    if transcript is not None and not turns:
        sel.reject("too_little_speech", 0, num_frames, fps)
        return sel
    cuts = sorted({s.start_frame for s in shots.shots} | {num_frames}) if shots else [0, num_frames]
    pieces = []
    for a, b, who in turns:  # split every turn at the cuts inside it
        inner = [c for c in cuts if a < c < b]
        bounds = [a, *inner, b]
        pieces += [(x, y, who) for x, y in zip(bounds, bounds[1:]) if y > x]
    active, reason = active_faces(num_frames, pose, sync, sync_opts)
    min_f, max_f = round(opts.min_clip_s * fps), round(opts.max_clip_s * fps)
    for a, b, who in pieces:
        for r in sorted(set(reason[a:b]) - {""}):  # frames of the turn lost to a filter: one reject, its runs as spans
            runs = _runs(reason[a:b] == r)
            sel.rejects[r] += 1
            sel.rejected_s[r] += sum(y - x for x, y in runs) / fps
            sel.spans += [(a + int(x), a + int(y), r, None) for x, y in runs]
        # one identity per clip: runs of one active face track
        for x, y in _value_runs(active[a:b]):
            track = int(active[a + x])
            if track < 0:
                continue
            x, y = a + x, a + y
            n = y - x
            if n < min_f:
                sel.reject("too_short", x, y, fps, track)
                continue
            parts = int(np.ceil(n / max_f))
            if n / parts < min_f:  # equal parts would be too short: max-length clips, the rest rejected
                parts -= 1
                rest = n - parts * max_f
                sel.reject("too_short", y - rest, y, fps, track)
                y = x + parts * max_f
            edges = np.linspace(x, y, parts + 1).round().astype(int)
            for f0, f1 in zip(edges, edges[1:]):
                clip_sync = None
                if sync is not None:
                    clip_sync, why = sync_decision(sync, track, int(f0), int(f1), who, sync_opts)
                    if why is None and who is not None:
                        sel.speaker_faces.setdefault(who, set()).add(track)
                else:
                    why = None
                view = speaker_view(pose, int(f0), int(f1), track if sync is not None else None)
                checks = quality_checks(view, height, transcript, None, f0 / fps, f1 / fps, opts, any_speaker=sync is not None)
                if clip_sync is not None:
                    checks = {"sync": GateCheck(verdict=clip_sync.verdict, score=clip_sync.confidence, threshold=sync_opts.min_confidence,
                                                reason=why or "voice_over"), **checks}
                why = why or first_failure(checks)
                if why:
                    sel.reject(why, int(f0), int(f1), fps, track)
                    continue
                sel.checks.append(checks)
                sel.windows.append((int(f0), int(f1 - f0)))
                sel.crops.append(crop_box(view, width, height, opts))
                sel.syncs.append(clip_sync)
    return sel


def sync_decision(sync: dict[str, np.ndarray], track: int, f0: int, f1: int, speaker: str | None,
                  opts: SyncOptions) -> tuple[ClipSync, str | None]:
    """The clip's sync (offset, confidence of the speaker's face over the whole clip), its verdict
    and the reject reason, if any: ``not_speaking`` for a frozen mouth, ``av_unsynced`` beyond
    ``max_offset_frames``, ``voice_over`` below ``fail_below`` (a dub, a voice over a face that
    does not say it); between ``fail_below`` and ``min_confidence`` the clip is ``unverified`` and
    kept or rejected by ``sync.unverified``. Offsets up to ``max_shift_frames`` are corrected by
    shifting the audio."""
    backend = str(sync["backend"])
    if backend == "syncnet":  # as syncnet_python's evaluate: the 5-frame windows that end inside the clip, less one
        f1 = max(f0 + 1, f1 - 5)
    video = track_series(sync["video"], sync["faces_track"], track, f0, f1)
    sc = score(video, np.asarray(sync["audio"][f0:f1]), backend, opts.vshift, opts.min_mouth_std)
    shift = sc.offset if abs(sc.offset) <= opts.max_shift_frames else 0
    frozen = backend != "syncnet" and bool(np.nanstd(video.reshape(len(video), -1)[:, 0]) < opts.min_mouth_std)
    why = None
    if frozen:
        verdict, why = "fail", "not_speaking"
    elif abs(sc.offset) > opts.max_offset_frames:
        verdict, why = "fail", "av_unsynced"
    elif sc.confidence < opts.fail_below:
        verdict, why = "fail", "voice_over"
    elif sc.confidence < opts.min_confidence:
        verdict = "unverified"
        why = "sync_unverified" if opts.unverified == "reject" else None
    else:
        verdict = "pass"
    record = ClipSync(backend=backend, face_track=track, speaker=speaker, offset_frames=sc.offset,
                      confidence=sc.confidence, audio_shift_frames=shift, verdict=verdict)
    return record, why


def speaker_view(pose: dict[str, np.ndarray] | None, f0: int, f1: int, track: int | None) -> dict[str, np.ndarray] | None:
    """The pose arrays of frames ``[f0, f1)`` as the clip's speaker sees them: face, head pose and
    face/mouth boxes of face track ``track`` (None: the tracked primary face)."""
    return None if pose is None else slice_pose(pose, f0, f1, track)


def quality_checks(p: dict | None, height: int, t: Transcript | None, speaker: str | None, a: float, b: float,
                   opts: SelectOptions, any_speaker: bool = False) -> dict[str, GateCheck]:
    """Every quality gate's verdict on a candidate clip ``[a, b)`` s, in the order they are applied,
    each with its score and threshold (``unverified`` where the gate has nothing to measure: no
    head pose, no sharpness). ``p`` is its ``speaker_view``; speech is that of ``speaker`` (None:
    the transcript's main speaker), or of anyone with ``any_speaker`` (the sync verdict already
    says the voice is the face's). A failed check's ``reason`` is the reject reason."""
    checks: dict[str, GateCheck] = {}

    def at_least(name: str, reason: str, value: float | None, threshold: float) -> None:
        checks[name] = GateCheck.measure(value, threshold, reason)

    def at_most(name: str, reason: str, value: float | None, threshold: float) -> None:
        checks[name] = GateCheck.measure(value, threshold, reason, at_least=False)

    if p is not None:
        conf = p["part_confidences"]
        boxes = p["part_boxes"][:, 0]
        face_h = float(np.nanmedian(boxes[:, 3] - boxes[:, 1])) if not np.isnan(boxes[:, 0]).all() else 0.0
        at_least("face_height_frac", "face_too_small", face_h / height, opts.min_face_height_frac)
        at_least("face_px", "face_too_small_px", face_h, opts.min_face_px)
        at_least("face_confidence", "low_landmark_confidence", float(conf[:, 0].mean()), opts.min_face_confidence)
        at_least("torso_confidence", "low_landmark_confidence", float(conf[:, 4].mean()), opts.min_torso_confidence)
        head = p.get("head_pose")  # pose files before head pose lack it
        known = head is not None and not np.isnan(head[:, 0]).all()
        at_most("yaw_deg", "non_frontal", float(np.nanmedian(np.abs(head[:, 0]))) if known else None, opts.max_yaw_deg)
        at_most("pitch_deg", "non_frontal", float(np.nanmedian(np.abs(head[:, 1]))) if known else None, opts.max_pitch_deg)
        sharp = p.get("face_sharpness")
        known = sharp is not None and not np.isnan(sharp).all()
        at_least("face_sharpness", "motion_blur", float(np.nanmedian(sharp)) if known else None, opts.min_face_sharpness)
    if t is not None:
        who = speaker if speaker is not None else t.main_speaker
        clean = flagged = 0.0
        for s in t.segments:
            mine = [w for w in s.words if any_speaker or w.speaker == who]
            said = sum(max(0.0, min(b, w.end_s) - max(a, w.start_s)) for w in mine)
            if mine and said == 0.0 and s.flags:  # words aligned to zero length (Whisper over music): the segment's span
                said = max(0.0, min(b, s.end_s) - max(a, s.start_s))
            flagged, clean = (flagged + said, clean) if s.flags else (flagged, clean + said)
        share = flagged / (clean + flagged) if clean + flagged > 0 else 0.0
        at_most("flagged_speech_share", "asr_unreliable", share, opts.max_flagged_speech_share)
        at_least("speech_ratio", "too_little_speech", clean / (b - a), opts.min_speech_ratio)
    return checks


def quality_reject(p: dict | None, height: int, t: Transcript | None, speaker: str | None, a: float, b: float,
                   opts: SelectOptions, any_speaker: bool = False) -> str | None:
    """The reason of the first quality check (``quality_checks``) a candidate clip fails, or None."""
    return first_failure(quality_checks(p, height, t, speaker, a, b, opts, any_speaker))


def first_failure(checks: dict[str, GateCheck]) -> str | None:
    return next((c.reason for c in checks.values() if c.verdict == "fail"), None)


def crop_box(view: dict | None, width: int, height: int, opts: SelectOptions) -> tuple[int, int, int] | None:
    """A fixed square crop for the clip from the median boxes of its ``speaker_view``: (x, y, side),
    even numbers. The torso joins the upper-body box only when it lies under the speaker's face
    (MediaPipe's body is one person: with two anchors it may be the other one)."""
    if opts.crop == "full" or view is None:
        return None
    face = np.nanmedian(view["part_boxes"][:, 0], axis=0)
    if np.isnan(face).any():
        return None
    if opts.crop == "face":
        cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
        side = max(face[2] - face[0], face[3] - face[1]) * opts.face_scale
    else:  # upper body: face and shoulders, head near the top third
        torso = np.nanmedian(view["part_boxes"][:, 4], axis=0)
        face_w = face[2] - face[0]
        under_face = not np.isnan(torso).any() and face[0] - face_w <= (torso[0] + torso[2]) / 2 <= face[2] + face_w
        boxes = [face] + ([torso] if under_face else [])
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1 = max(b[2] for b in boxes)
        side = (face[3] - face[1]) * opts.upper_body_scale
        side = max(side, x1 - x0)
        cx, cy = (x0 + x1) / 2, y0 + side * opts.upper_body_centre_y
    side = int(min(side, width, height)) // 2 * 2
    x = int(np.clip(cx - side / 2, 0, width - side)) // 2 * 2
    y = int(np.clip(cy - side / 2, 0, height - side)) // 2 * 2
    return (x, y, side)
