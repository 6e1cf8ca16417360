"""The emotion stage: pseudo-labels from an expression classifier over FLAME motion (stages/emotion.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds

from schemas import ClipRecord, ClipSet
from stages.emotion import (EmotionOptions, classifier_digest, emotion_assets, emotion_unavailable, estimates_current,
                            label_clip_set)
from stages.errors import StageError


def _clip_set(shards, folder):
    """The clips of facial shards as a video's clip set, their flame.npz files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for s in wds.WebDataset(shards, shardshuffle=False):
        (folder / f"{s['__key__']}.flame.npz").write_bytes(s["flame.npz"])
        clips.append(ClipRecord.model_validate_json(s["json"]))
    return ClipSet(clips=clips), lambda key: contextlib.nullcontext(str(folder / f"{key}.flame.npz"))


def test_held_out_labelled_sequences_are_labelled_as_their_emotion(tmp_path, emotion_classifier):
    from facial_data import write_facial_shards

    path, report = emotion_classifier
    # other clips (seed, prefix) of the same four emotions, as a corpus the classifier never saw
    held = write_facial_shards(tmp_path / "held", clips=16, labels=4, seed=5, prefix="held")
    clip_set, flame_file = _clip_set(held, tmp_path / "files")
    opts = EmotionOptions(classifier=str(path))
    out = label_clip_set(clip_set, flame_file, opts)
    assert all(c.emotion_estimate is None for c in clip_set.clips)  # a copy: the input is left as it was
    right = 0
    for c in out.clips:
        e = c.emotion_estimate
        assert set(e.probabilities) == set(report["labels"]) and abs(sum(e.probabilities.values()) - 1) < 1e-3
        assert e.confidence == e.probabilities[e.label] == max(e.probabilities.values())
        assert e.source == "flame-probe:" + classifier_digest(str(path)) and e.windows == 4  # 50 frames, 24 a window: 0, 12, 24, 26
        right += e.label == c.source_metadata["emotion"]
    assert right / len(out.clips) >= 0.9, (right, len(out.clips))
    assert estimates_current(out, opts)
    # a clip without a FLAME fit, or with too few fitted frames, gets no estimate
    bare = ClipSet(clips=[clip_set.clips[0].model_copy(update={"members": ["json", "wav"]})])
    assert label_clip_set(bare, flame_file, opts).clips[0].emotion_estimate is None
    with np.load(tmp_path / "files" / f"{clip_set.clips[1].key}.flame.npz") as f:
        arrays = dict(f)
    arrays["valid"][::2] = False
    np.savez(tmp_path / "files" / f"{clip_set.clips[1].key}.flame.npz", **arrays)
    assert label_clip_set(ClipSet(clips=[clip_set.clips[1]]), flame_file, opts).clips[0].emotion_estimate is None


def test_a_new_classifier_at_the_same_path_makes_the_estimates_stale(tmp_path, emotion_classifier):
    from facial_data import write_facial_shards

    path = tmp_path / "probe.pt"
    shutil.copy(emotion_classifier[0], path)
    clip_set, flame_file = _clip_set(write_facial_shards(tmp_path / "s", clips=2, labels=2, prefix="x"), tmp_path / "f")
    opts = EmotionOptions(classifier=str(path))
    out = label_clip_set(clip_set, flame_file, opts)
    saved = torch.load(path, weights_only=True)
    saved["state"]["head.bias"] += 1.0
    torch.save(saved, path)
    assert not estimates_current(out, opts)
    assert estimates_current(label_clip_set(clip_set, flame_file, opts), opts)


def test_no_or_a_missing_or_a_pickled_classifier_says_so(tmp_path):
    assert emotion_unavailable(EmotionOptions()).startswith("no classifier (emotion.classifier: a probe.pt")
    missing = EmotionOptions(classifier=str(tmp_path / "nope.pt"))
    assert emotion_unavailable(missing) == f"missing assets: emotion classifier {tmp_path / 'nope.pt'} (see `cnas assets check`)"
    assert emotion_assets(EmotionOptions())["emotion_classifier"].startswith("optional: not set")
    assert emotion_assets(missing)["emotion_classifier"].startswith(f"missing ({tmp_path / 'nope.pt'})")

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state": {}, "report": {"hidden": 8, "x": Evil()}}, tmp_path / "evil.pt")
    clip = ClipRecord.model_validate_json(json.dumps({
        "key": "v-0000", "clip_uid": "u", "video_id": "v", "index": 0, "source_uri": "x", "start_s": 0.0, "end_s": 2.0,
        "source_duration_s": 2.0, "fps": 25.0, "num_frames": 50, "sample_rate_hz": 16000, "num_audio_samples": 32000,
        "width": 64, "height": 64, "members": ["json", "flame.npz"]}))
    with pytest.raises(StageError, match=r"emotion_classifier_unusable: .*evil.pt: refused to load"):
        label_clip_set(ClipSet(clips=[clip]), lambda key: contextlib.nullcontext(io.BytesIO()),
                       EmotionOptions(classifier=str(tmp_path / "evil.pt")))


def test_the_release_card_states_the_label_distribution():
    from pipeline.release.card import emotion_line
    from pipeline.release.package import emotion_summary
    from schemas import EmotionEstimate

    base = dict(clip_uid="u", index=0, source_uri="x", start_s=0.0, end_s=2.0, source_duration_s=2.0, fps=25.0, num_frames=50,
                sample_rate_hz=16000, num_audio_samples=32000, width=64, height=64, members=["json"])

    def clip(i, human=None, label=None, conf=0.0):
        est = EmotionEstimate(label=label, confidence=conf, windows=2, source="flame-probe:0123") if label else None
        return ClipRecord(key=f"v{i}-0000", video_id=f"v{i}", source_metadata={"emotion": human} if human else {},
                          emotion_estimate=est, **base)

    clips = [clip(0, "Happy", "sad", 0.9), clip(1, None, "sad", 0.8), clip(2, None, "angry", 0.4), clip(3), clip(4, None, "sad", 0.6)]
    s = emotion_summary(clips)
    assert s["labelled"] == {"happy": 1} and s["estimated"] == {"angry": 1, "sad": 2} and s["unlabelled"] == 1
    assert s["estimated_confidence"]["p50"] == 0.6 and s["estimate_sources"] == ["flame-probe:0123"]
    line = emotion_line({"emotions": s})
    assert line.startswith('human labels {"happy": 1}; pseudo-labels {"angry": 1, "sad": 2} (confidence p10 / p50 / p90 0.44 / 0.6 / 0.76')
    assert "1 clips with neither" in line
    assert "no pseudo-labels (the emotion stage did not run)" in emotion_line({"emotions": emotion_summary([clip(5)])})
