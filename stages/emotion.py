"""Emotion stage: per-clip emotion pseudo-labels for a corpus nobody labelled (a news corpus is
"neutral" by default, which leaves the facial trainer's emotion binding nothing to learn).

An expression classifier over FLAME motion (``geometry/expression.py``), trained on a labelled corpus
— MEAD through ``cnas adapt mead`` → ``cnas ingest`` → ``cnas train facial-probe`` — reads each
clip's ``flame.npz`` in sliding windows; the clip's ``emotion_estimate`` is the label of the mean
window probabilities, its probability as the confidence, and the classifier file's digest as the
source. A human label (the sources file's ``emotion``) is never replaced: the trainers prefer it
and use an estimate only above their ``min_emotion_confidence``. Ray-free.

Nothing is made up without a classifier: the stage is reported as skipped (``emotion_unavailable``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Callable, ContextManager

import numpy as np
from pydantic import Field

from schemas import ClipSet, EmotionEstimate
from schemas import shard as layout
from schemas.emotion import EMOTIONS
from schemas.settings import Settings

from .errors import StageError

WHERE_TO_GET = ("a probe.pt trained on labelled FLAME sequences: cnas adapt mead → cnas ingest → "
                "cnas train facial-probe --data <labelled shards> --out <folder>")


class EmotionOptions(Settings):
    """Options of the emotion stage (config section ``emotion``)."""

    enabled: bool = Field(True, description="runs when a classifier is given; otherwise reported as skipped")
    classifier: str | None = Field(None, description="expression classifier (probe.pt or its folder) from cnas train facial-probe")
    window_frames: int | None = Field(None, ge=4, description="frames per classified window; none: the classifier's own")
    hop_frames: int = Field(12, ge=1, description="frames between window starts")
    min_valid_frames: float = Field(0.9, ge=0, le=1, description="a window needs this share of frames with a FLAME fit")


def classifier_path(path: str) -> str:
    """The classifier file a configured path names (a folder holds ``probe.pt``)."""
    path = os.path.expanduser(path)
    return os.path.join(path, "probe.pt") if os.path.isdir(path) else path


def emotion_unavailable(opts: EmotionOptions) -> str | None:
    """Why the stage cannot run with these options, or None."""
    if not opts.classifier:
        return "no classifier (emotion.classifier: " + WHERE_TO_GET + ")"
    if not os.path.isfile(classifier_path(opts.classifier)):
        return f"missing assets: emotion classifier {opts.classifier} (see `cnas assets check`)"
    return None


def emotion_assets(opts: EmotionOptions) -> dict[str, str]:
    """``cnas assets check``'s line for the classifier."""
    if not opts.classifier:
        return {"emotion_classifier": "optional: not set (" + WHERE_TO_GET + ")"}
    path = classifier_path(opts.classifier)
    return {"emotion_classifier": f"ok: {path}" if os.path.isfile(path) else f"missing ({path}): {WHERE_TO_GET}"}


def classifier_digest(path: str) -> str:
    """16 hex digits of the SHA-256 of the classifier file: the estimates' ``source``."""
    h = hashlib.sha256()
    with open(classifier_path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _classifier(path: str, digest: str):
    """The classifier, loaded once per process and file content (``digest`` keys the cache)."""
    from geometry.expression import load_expression_classifier

    try:
        return load_expression_classifier(classifier_path(path))
    except (FileNotFoundError, ValueError) as e:
        raise StageError("emotion_classifier_unusable", str(e)) from None


def estimates_current(clip_set: ClipSet, opts: EmotionOptions) -> bool:
    """Whether a stored result was made by the classifier the options name now (a new file at the
    same path makes a resumed run label the clips again)."""
    if emotion_unavailable(opts):
        return True
    digest = classifier_digest(opts.classifier)
    return all(c.emotion_estimate is None or c.emotion_estimate.source.endswith(":" + digest) for c in clip_set.clips)


def label_clip_set(clip_set: ClipSet, flame_file: Callable[[str], ContextManager[str]], opts: EmotionOptions) -> ClipSet:
    """Every clip with a FLAME fit gets an ``emotion_estimate`` (a deep copy is returned); a clip
    without one, or without a window of enough fitted frames, gets none. ``flame_file(key)``: a local
    path of the clip's ``flame.npz`` (the pipeline fetches it from its work dir)."""
    from geometry.expression import classify_motion

    out = clip_set.model_copy(deep=True)
    if not out.clips:
        return out
    digest = classifier_digest(opts.classifier)
    probe, report = _classifier(opts.classifier, digest)
    window = opts.window_frames or int(report["window_frames"])
    known = list(report.get("labels") or EMOTIONS)
    for clip in out.clips:
        if layout.FLAME not in clip.members:
            continue
        with flame_file(clip.key) as path, np.load(path) as fit:
            motion = np.concatenate([fit["exp"], fit["pose"][:, 3:6]], axis=1)
            valid = fit["valid"].astype(bool)
        got = classify_motion(probe, motion, valid, window, opts.hop_frames, opts.min_valid_frames)
        if got is None:
            continue
        probs, windows = got
        # the classifier's head spans every emotion; it only learnt those its training data had
        mass = {e: float(probs[EMOTIONS.index(e)]) for e in known}
        total = sum(mass.values()) or 1.0
        mass = {e: round(p / total, 4) for e, p in mass.items()}
        label = max(mass, key=mass.get)
        clip.emotion_estimate = EmotionEstimate(label=label, confidence=mass[label], probabilities=mass, windows=windows,
                                                source=f"flame-probe:{digest}")
    return out
