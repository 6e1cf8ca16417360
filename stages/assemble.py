"""Clip assembly: from one video's stage outputs to its clip set. Ray-free, file-system local.

``assemble_clips`` chooses the windows (``stages.select``, or equal windows in fixed mode), measures
and filters their audio, cuts them (``stages.clips.make_clips``) and completes each clip's record
with what the other stages found in its frames: the speaker's landmarks (the ``pose.npz`` member,
with the face track's identity embedding), pose quality figures and the transcript words of its
audio. It does not say which stages contributed: the executor marks ``stages`` / ``skipped_stages``
from the declarations (``StageSpec.on_clips``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import ClipSet, NormalizedMedia, ShotList, Transcript
from schemas import shard as layout
from schemas.source import SourceProvenance

from .audio_quality import audio_checks
from .clips import ClipOptions, fixed_windows, make_clips, measure_audio
from .pose import pose_quality, slice_pose, write_clip_pose
from .select import reject_examples, select_clips
from .speech import slice_transcript


@dataclass
class ClipInputs:
    """What the clip stage reads for one video, on local disk or in memory."""

    media: NormalizedMedia  # with local ``video_path`` and ``audio_path``
    source_uri: str
    metadata: dict[str, Any]
    provenance: SourceProvenance | None = None
    transcript: Transcript | None = None
    shots: ShotList | None = None
    pose: dict[str, np.ndarray] | None = None  # the video's pose arrays (memory-mapped)
    sync: dict[str, np.ndarray] | None = None  # the sync stage's per-frame arrays
    sync_options: Any = None  # the sync stage's options (its thresholds decide clip verdicts)
    identity: dict[int, np.ndarray] | None = None  # face track -> identity embedding


def primary_track(pose: dict[str, np.ndarray], f0: int, f1: int) -> int | None:
    """The face track most often in the primary slot over frames ``[f0, f1)``."""
    if "faces_track" not in pose:
        return None
    ids = np.asarray(pose["faces_track"][f0:f1, 0])
    ids = ids[ids >= 0]
    return int(np.bincount(ids).argmax()) if len(ids) else None


def assemble_clips(inp: ClipInputs, out_dir: str, opts: ClipOptions) -> ClipSet:
    """Select, cut and describe the clips of one video into ``out_dir``; returns its clip set with
    the clip-level rejects (selected mode)."""
    media, pose, sync = inp.media, inp.pose, inp.sync
    result = ClipSet()
    if opts.mode == "selected":
        sel = select_clips(media.num_frames, media.fps, media.width, media.height, inp.shots, inp.transcript, pose, opts,
                           sync, inp.sync_options)
        windows, crops, syncs, checks = sel.windows, sel.crops, sel.syncs, sel.checks
        result.speaker_faces = {who: sorted(tracks) for who, tracks in sel.speaker_faces.items()}
    else:
        sel = None
        windows = fixed_windows(media.num_frames, media.fps, opts)
        crops, syncs, checks = [None] * len(windows), [None] * len(windows), [{}] * len(windows)
    # audio figures of every window; selected clips must also pass the audio limits
    filtered = sel is not None and opts.audio_filter
    kept, figures, audio_rejected = measure_audio(media.audio_path, media.fps, windows, opts, filtered)
    if sel is not None:
        for i, why in audio_rejected:
            sel.reject(why, windows[i][0], windows[i][0] + windows[i][1], media.fps, syncs[i].face_track if syncs[i] else None)
        result.rejects, result.rejected_s = dict(sel.rejects), {k: round(v, 3) for k, v in sel.rejected_s.items()}
        result.reject_spans = reject_examples(sel.spans, media.fps)
    keep = kept[: opts.max_clips_per_video]
    windows, crops, syncs, checks = ([x[i] for i in keep] for x in (windows, crops, syncs, checks))
    figures = figures[: len(keep)]
    clips = make_clips(media, inp.source_uri, out_dir, opts, inp.metadata, windows, crops, opts.crop_size, inp.provenance, syncs)
    for clip, q, gates in zip(clips, figures, checks):
        clip.quality.update(q)
        clip.checks = {**gates, **(audio_checks(q, opts) if filtered else {})}
        f0 = round(clip.start_s * media.fps)
        f1 = f0 + clip.num_frames
        if pose is not None:
            view = slice_pose(pose, f0, f1, clip.sync.face_track if clip.sync else None)  # the speaker's face
            clip.face_track = clip.sync.face_track if clip.sync else primary_track(pose, f0, f1)
            embedding = inp.identity.get(clip.face_track) if inp.identity else None
            if embedding is not None:
                view["face_embedding"] = embedding
            write_clip_pose(os.path.join(out_dir, layout.member_name(clip.key, layout.POSE)), view)  # layout 2: compact landmarks
            clip.members.append(layout.POSE)
            clip.quality.update(pose_quality(view, 0, f1 - f0, media.height))
        if inp.transcript is not None:
            # words timed on the clip's own audio, which a sync shift took that many frames earlier
            shift_s = clip.sync.audio_shift_frames / media.fps if clip.sync else 0.0
            clip.transcript = slice_transcript(inp.transcript, clip.start_s - shift_s, clip.end_s - shift_s)
            clip.language = clip.language or inp.transcript.language
            spoken = sum(w.end_s - w.start_s for s in clip.transcript.segments for w in s.words)
            clip.quality["speech_ratio"] = round(spoken / (clip.end_s - clip.start_s), 4)
    result.clips = clips
    return result
