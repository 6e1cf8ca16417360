"""What face identity and audio quality cost in an ingest run.

    .venv/bin/python benchmarks/identity_audio.py [--copies 2]

Ingests the demo videos (``--copies`` of each, distinct ids) with every stage on the embedded local
Ray, then reads from ``stats.json`` the identity stage's seconds (summed over videos) and re-times
the audio figures of every window the clip stage measured (``measure_audio``); prints both as a
share of the ingest wall time. Copy the printed line into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.engine.config import load_config
from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video
from pipeline.engine.runner import run_ingest
from schemas import NormalizedMedia  # noqa: E402
from stages.clips import fixed_windows, measure_audio  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=2)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cnas-idaudio-")
    rows = ["path,id,language"]
    for v in DEMO_VIDEOS:
        path = os.path.join(d, f"{v.name}.mp4")
        make_talking_video(path, v)
        for c in range(args.copies):
            rows.append(f"{path},{v.name}_{c},{'zh' if v.voice.startswith('cmn') else 'en'}")
    with open(os.path.join(d, "s.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    cfg = load_config(None, ["clips.min_face_px=64"])
    result = run_ingest(os.path.join(d, "s.csv"), os.path.join(d, "run"), cfg, echo=lambda m: None)
    stats = json.load(open(os.path.join(d, "run", "stats.json")))
    wall = stats["wall_s"]
    identity_s = stats["stage_timings"].get("identity", {}).get("seconds", 0.0)
    audio_s = 0.0
    ledger = os.path.join(d, "run", "work", "ledger")
    for vid in sorted(os.listdir(ledger)):
        entry = lambda st: json.load(open(os.path.join(ledger, vid, f"{st}.json")))["output"]  # noqa: E731
        if not os.path.exists(os.path.join(ledger, vid, "clips.json")):
            continue
        media = NormalizedMedia.model_validate(entry("normalize"))
        # time 2-s windows over the whole video: at least as many as the clip stage measures (its candidates)
        windows = fixed_windows(media.num_frames, media.fps, cfg.clips) or [(0, media.num_frames)]
        t0 = time.perf_counter()
        measure_audio(media.audio_path, media.fps, windows, cfg.clips, True)
        audio_s += time.perf_counter() - t0
    print(f"{len(rows) - 1} videos, {result.stats.source_hours * 60:.2f} source-minutes, ingest wall {wall:.1f} s: identity stage "
          f"{identity_s:.2f} s ({100 * identity_s / wall:.1f} %), audio figures of every 2-s window {audio_s:.2f} s "
          f"({100 * audio_s / wall:.1f} %); together {100 * (identity_s + audio_s) / wall:.1f} % of the wall time")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
