"""The release's human-readable parts: the plots and the dataset card (README.md)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path



from pipeline.engine.config import ReleaseConfig
from pipeline.release.splits import split_keys


AUDIO_FIGURES = {"loudness_lufs": "loudness (LUFS)", "snr_db": "SNR (dB)", "music_score": "music score", "clipping_ratio": "clipped share"}


def make_plots(clips, split_of_speaker: dict[str, str] | None, cfg: ReleaseConfig, folder: Path) -> None:
    """The card's plots (durations, minutes per speaker, part confidences, audio figures) as PNGs in
    ``folder``; ``split_of_speaker`` None (a run, not a release) draws speakers in one colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    durations = [c.end_s - c.start_s for c in clips.values()]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(durations, bins=20, color="#4477aa")
    ax.set(xlabel="clip duration (s)", ylabel="clips", title="Clip durations")
    fig.tight_layout(), fig.savefig(folder / "durations.png", dpi=100), plt.close(fig)
    per = defaultdict(float)
    speaker = split_keys(list(clips.values()), cfg.speaker_keys, cfg.split_by_identity)
    for c in clips.values():
        per[speaker[c.key]] += (c.end_s - c.start_s) / 60
    fig, ax = plt.subplots(figsize=(5, 3))
    names = sorted(per, key=per.get, reverse=True)[:30]
    if split_of_speaker is None:
        ax.bar(range(len(names)), [per[n] for n in names], color="#228833")
        ax.set(xlabel="speaker", ylabel="minutes", title="Minutes per speaker (top 30)")
    else:
        ax.bar(range(len(names)), [per[n] for n in names], color=["#228833" if split_of_speaker.get(n) == "train" else "#ee6677" for n in names])
        ax.set(xlabel="speaker (green: train)", ylabel="minutes", title="Minutes per speaker (top 30)")
    fig.tight_layout(), fig.savefig(folder / "speakers.png", dpi=100), plt.close(fig)
    audio = {k: [c.quality[k] for c in clips.values() if k in c.quality] for k in AUDIO_FIGURES}
    fig, axes = plt.subplots(1, len(AUDIO_FIGURES), figsize=(3 * len(AUDIO_FIGURES), 2.8))
    for ax, (k, label) in zip(axes, AUDIO_FIGURES.items()):
        ax.hist(audio[k] or [0.0], bins=20, color="#aa3377")
        ax.set(xlabel=label, ylabel="clips")
    fig.suptitle("Audio quality per clip")
    fig.tight_layout(), fig.savefig(folder / "audio.png", dpi=100), plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for part in ("face", "mouth", "left_hand", "right_hand", "torso"):
        vals = [c.quality[f"mean_{part}_confidence"] for c in clips.values() if f"mean_{part}_confidence" in c.quality]
        if vals:
            ax.hist(vals, bins=20, range=(0, 1), histtype="step", label=part)
    ax.set(xlabel="mean part confidence per clip", ylabel="clips", title="Part confidences")
    ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(folder / "part_confidence.png", dpi=100), plt.close(fig)


def curation_rows(stats: dict) -> str:
    rows = [f"| {k} | {v['p10']:g} | {v['p50']:g} | {v['p90']:g} | {v['max']:g} |" for k, v in stats.get("curation", {}).items()]
    return "\n".join(rows) or "| (the curate stage did not run) | | | | |"


def emotion_line(stats: dict) -> str:
    e = stats.get("emotions") or {}
    if not e:
        return "(not recorded)"
    conf = e.get("estimated_confidence") or {}
    est = (f"pseudo-labels {json.dumps(e['estimated'])} (confidence p10 / p50 / p90 {conf['p10']:g} / {conf['p50']:g} / "
           f"{conf['p90']:g}; {', '.join(e['estimate_sources'])})") if e.get("estimated") else "no pseudo-labels (the emotion stage did not run)"
    return (f"human labels {json.dumps(e.get('labelled', {}))}; {est}; {e.get('unlabelled', 0)} clips with neither "
            "(the facial trainer gives them its default_emotion, and a pseudo-label under its min_emotion_confidence).")


def dataset_card(stats: dict, cfg: ReleaseConfig, version: str) -> str:
    split_rows = "\n".join(f"| {n} | {s['clips']} | {s['hours']:.3f} | {len(s['speakers'])} | {s['shards']} |" for n, s in stats["splits"].items())
    rejects = "\n".join(f"| {k} | {v} |" for k, v in {**stats["failure_reasons"], **stats["rejection_reasons"]}.items()) or "| (none) | |"
    return f"""# {cfg.name} {version} — Chinese News Anchor Speech dataset

- **Licence / terms:** {cfg.licence}. {cfg.terms}
- **Schema version:** {stats['schema_version']} (JSON Schemas in `schemas/`)
- **Size:** {stats['clips']} clips, {stats['hours']:.3f} hours, {stats['speakers']} speakers, {stats['identities']} face identities

| split | clips | hours | speakers | shards |
|---|---|---|---|---|
{split_rows}

Hours per face identity (ids from the run's `identities.json`; each clip's `pose.npz` holds its track's 128-d `face_embedding`):
{", ".join(f"{k} {v:.3f} h" for k, v in stats['per_identity_hours'].items()) or "(no identities: the identity stage did not run)"}

Splits are speaker-disjoint: {stats['split_key']}; assigned
deterministically (seed {cfg.seed}) towards the ratios {cfg.split_ratios}.

## Format
WebDataset shards `<split>/cnas-<split>-NNNNNN.tar`; a sample per clip, key `<video_id>-<index>`:
`json` (clip record: times, transcript with word timings and speakers, quality figures), `mp4`
(H.264, 25 fps), `wav` (16 kHz mono PCM){', `pose.npz` (MediaPipe landmarks, part confidences)' if stats['part_confidence'] else ''}
and, when FLAME was fitted, `flame.npz`. Per split: `<split>.index.json` (wids shard index with
sample counts, sizes, sha256), `<split>/manifest.jsonl` (per-member sizes and sha256). `SHA256SUMS`
covers every file. Check a copy with `cnas validate <dir>`. The YAML header of this card lists the
splits' data files for the Hugging Face Hub and `datasets`; `croissant.json` is the Croissant 1.0
description (files with sha256, a record set `clips_<split>` per split).

```python
import webdataset as wds
ds = wds.WebDataset("train/cnas-train-{{000000..000009}}.tar").decode()
from datasets import load_dataset
hf = load_dataset("path/to/this/folder", split="train")   # reads the configs in this card's YAML header
import mlcroissant as mlc                                   # or through croissant.json
records = mlc.Dataset(jsonld="path/to/this/folder/croissant.json").records(record_set="clips_train")
```

## Statistics
![durations](plots/durations.png) ![speakers](plots/speakers.png) ![parts](plots/part_confidence.png) ![audio](plots/audio.png)

Part confidences (mean per clip): {json.dumps(stats['part_confidence'])}

Broadcast curation (docs/curation.md; p10 / p50 / p90 / max over the clips):

| score | p10 | p50 | p90 | max |
|---|---|---|---|---|
{curation_rows(stats)}

Flags (kept clips): {json.dumps(stats.get('curation_flags', {}))}. Rebroadcast copies: {stats.get('duplicates', {}).get('dropped_hours', 0):.4f} h
dropped at ingest, {stats.get('duplicates', {}).get('groups_in_release', 0)} groups kept whole in one split
({stats.get('duplicates', {}).get('copy_hours_in_release', 0):.4f} h of copies).

Emotion labels (docs/emotion.md): {emotion_line(stats)}

## What was left out, and why

| reason | count |
|---|---|
{rejects}
"""

