"""The cascade: where clips can come from, found by cheap passes, so that the dense models (face
mesh, body, hands; then sync, identity and FLAME on their output) look only there.

A clip needs a face large enough, speech and a shot long enough. The pose stage gets the shots
and the transcript (both cheap passes over the whole video: shot detection, ASR/VAD at a real-time
factor of ~0.12) and runs BlazeFace full-range on every ``scan_every``-th frame (2.5 fps at 25 fps);
frames near a sample with a face of at least ``candidate_min_face_frac`` of the frame height, in
speech, in a shot of at least ``candidate_min_shot_s``, are candidates. Everything else — B-roll,
wide studio shots, silence, station idents — is never meshed; its frames read "not looked at"
(``skipped`` in pose.npz) and a clip candidate there is rejected as ``outside_candidates``.

The candidate thresholds sit well below the clip filters' (``clips.min_face_height_frac`` 0.08,
``clips.min_clip_s``), so the cascade drops nothing a clip could be cut from; benchmarks/ingest.py
``--mix news`` measures what it keeps against the exhaustive run.

Pure functions over arrays and records, plus one decoding helper; no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas import NormalizedMedia, ShotList, Transcript

from .frames import read_every


@dataclass
class FaceScan:
    """BlazeFace on every ``every``-th frame: per sample, the faces found and the tallest one."""

    frames: np.ndarray  # (S,) frame indices sampled
    faces: np.ndarray  # (S,) faces found
    max_height_frac: np.ndarray  # (S,) tallest face box / frame height (0 without a face)
    every: int


def scan_faces(detector, video_path: str, width: int, height: int, every: int) -> FaceScan:
    """Run ``detector`` (MediaPipe ``FaceDetection``, full range) on every ``every``-th frame."""
    frames, faces, tallest = [], [], []
    for t, rgb in read_every(video_path, width, height, every):
        dets = detector.process(rgb).detections or []
        frames.append(t)
        faces.append(len(dets))
        tallest.append(max((d.location_data.relative_bounding_box.height for d in dets), default=0.0))
    return FaceScan(np.array(frames, np.int64), np.array(faces, np.int32), np.array(tallest, np.float32), every)


def speech_mask(transcript: Transcript, num_frames: int, fps: float) -> np.ndarray:
    """Frames inside a transcript segment (words where there are, the segment's span otherwise)."""
    mask = np.zeros(num_frames, bool)
    for s in transcript.segments:
        spans = [(w.start_s, w.end_s) for w in s.words] or [(s.start_s, s.end_s)]
        for a, b in spans:
            mask[max(0, int(a * fps)): min(num_frames, int(np.ceil(b * fps)) + 1)] = True
    return mask


def candidate_mask(scan: FaceScan, num_frames: int, fps: float, transcript: Transcript | None, shots: ShotList | None,
                   min_face_frac: float, pad_s: float, min_shot_s: float) -> np.ndarray:
    """Frames the dense models must look at: within ``pad_s`` (plus the scan interval) of a sample
    with a face of at least ``min_face_frac`` of the frame height, in speech (when there is a
    transcript), in a shot of at least ``min_shot_s`` (when there are shots)."""
    mask = np.zeros(num_frames, bool)
    reach = scan.every + int(round(pad_s * fps))
    for t in scan.frames[scan.max_height_frac >= min_face_frac]:
        mask[max(0, t - reach): min(num_frames, t + reach + 1)] = True
    if transcript is not None:
        speech = speech_mask(transcript, num_frames, fps)
        near = np.convolve(speech, np.ones(2 * int(round(pad_s * fps)) + 1), mode="same") > 0  # speech within pad_s
        mask &= near
    if shots is not None:
        for s in shots.shots:
            if (s.end_frame - s.start_frame) < min_shot_s * fps:
                mask[s.start_frame: s.end_frame] = False
    return mask


def spans_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[a, b)`` runs of True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def pose_candidates(models, video: str, media: NormalizedMedia, transcript: Transcript | None, shots: ShotList | None,
                    opts) -> list[tuple[int, int]]:
    """The cascade's candidate spans of one video (stages/candidates.py): BlazeFace every
    ``scan_every`` frames, with the transcript and the shots."""
    scan = scan_faces(models.faces, video, media.width, media.height, opts.scan_every)
    mask = candidate_mask(scan, media.num_frames, media.fps, transcript, shots, opts.candidate_min_face_frac,
                          opts.candidate_pad_s, opts.candidate_min_shot_s)
    return spans_of(mask)
