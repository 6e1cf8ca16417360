"""Emotion pseudo-labels (the emotion stage, stages/emotion.py): the classifier's accuracy on held-out
labelled FLAME sequences — clips it never saw, labelled by ``label_clip_set`` exactly as the stage
labels a clip — on the synthetic labelled sets of tests/facial_data.py, from separable offsets to
offsets under the frame noise. Prints a markdown table (docs/BENCHMARKS.md).

    .venv/bin/python benchmarks/emotion_labels.py
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import contextlib  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import webdataset as wds
from facial_data import write_facial_shards, write_speech_facial_shards
from trainers.facial.probe import save_probe, train_probe
from stages.emotion import EmotionOptions, label_clip_set
from schemas import ClipRecord, ClipSet
d = Path(tempfile.mkdtemp(prefix="cnas-emotion-"))
print("| labelled set | classifier held-out acc. (windows) | clips labelled right by the stage | median confidence | chance |")
print("|---|---|---|---|---|")
for name, make_train, make_held in (
    ("first set (4 emotions)", lambda: write_facial_shards(d / "a", clips=16, labels=4, prefix="mead"), lambda: write_facial_shards(d / "ah", clips=32, labels=4, seed=5, prefix="held")),
    ("second set (4 emotions, speech, noisier)", lambda: write_speech_facial_shards(d / "b", clips=32, labels=4, prefix="mead"), lambda: write_speech_facial_shards(d / "bh", clips=32, labels=4, seed=5, prefix="held", span_s=(20.0, 30.0))),
    ("second set (8 emotions)", lambda: write_speech_facial_shards(d / "c", clips=64, labels=8, prefix="mead"), lambda: write_speech_facial_shards(d / "ch", clips=64, labels=8, seed=5, prefix="held", span_s=(20.0, 30.0))),
    ("second set, 8 emotions, offsets 0.03 (under the frame noise)", lambda: write_speech_facial_shards(d / "e", clips=64, labels=8, prefix="mead", offset_scale=0.03), lambda: write_speech_facial_shards(d / "eh", clips=64, labels=8, seed=5, prefix="held", span_s=(20.0, 30.0), offset_scale=0.03))):
    probe, report = train_probe(make_train(), 24, steps=200)
    path = save_probe(probe, report, d / ('p' + str(abs(hash(name)))))
    held = make_held()
    folder = d / ("f" + str(abs(hash(name))))
    folder.mkdir()
    clips = []
    for s in wds.WebDataset(held, shardshuffle=False):
        (folder / f"{s['__key__']}.flame.npz").write_bytes(s["flame.npz"]); clips.append(ClipRecord.model_validate_json(s["json"]))
    out = label_clip_set(ClipSet(clips=clips), lambda k: contextlib.nullcontext(str(folder / f"{k}.flame.npz")), EmotionOptions(classifier=str(path)))
    right = sum(c.emotion_estimate.label == c.source_metadata["emotion"] for c in out.clips)
    conf = sorted(c.emotion_estimate.confidence for c in out.clips)
    print(f"| {name} | {report['held_out_accuracy']:.3f} ({report['held_out_windows']} windows) | {right}/{len(out.clips)} = {right/len(out.clips):.3f} | {conf[len(conf)//2]:.3f} | {1/len(report['labels']):.3f} |")
