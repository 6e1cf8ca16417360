"""Ingestion throughput on N generated talking-person videos (embedded local Ray).

    .venv/bin/python benchmarks/ingest.py --videos 8 [--num-cpus 2] [--window-s 2] [--max-height 480]

Prints source-hours per wall-hour (whole run, including Ray start-up, and DAG only) and the
seconds each stage spent, summed over videos; appends nothing by itself — copy the printed table
into docs/BENCHMARKS.md with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.demo import DEMO_VIDEOS, make_talking_video  # noqa: E402
from pipeline.runner import run_ingest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--window-s", type=float, default=2.0)
    ap.add_argument("--max-height", type=int, default=480)
    ap.add_argument("--keep", help="keep inputs/outputs in this folder")
    args = ap.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="cnas-bench-")
    inputs = os.path.join(root, "inputs")
    os.makedirs(inputs, exist_ok=True)
    lines = ["path,id"]
    for v in DEMO_VIDEOS:
        path = os.path.join(inputs, f"{v.name}.mp4")
        if not os.path.exists(path):
            make_talking_video(path, v)
    for i in range(args.videos):  # the demo videos under distinct ids: every one is processed in full
        lines.append(f"{os.path.join(inputs, DEMO_VIDEOS[i % len(DEMO_VIDEOS)].name)}.mp4,bench{i:04d}")
    sources = os.path.join(root, "sources.csv")
    with open(sources, "w") as f:
        f.write("\n".join(lines) + "\n")
    cfg = load_config(None, [f"ray.num_cpus={args.num_cpus}", f"clips.window_s={args.window_s}", f"normalize.max_height={args.max_height}"])
    out = os.path.join(root, f"run-{int(time.time())}")
    t0 = time.perf_counter()
    result = run_ingest(sources, out, cfg, echo=lambda m: None)
    wall = time.perf_counter() - t0
    s = result.stats
    hours_in = s.source_hours
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; videos={args.videos} num_cpus={args.num_cpus} "
          f"window_s={args.window_s} max_height={args.max_height}")
    print(f"source audio/video: {hours_in * 3600:.1f} s in {s.clips} clips, {s.shards} shards")
    print(f"wall (incl. Ray start): {wall:.1f} s -> {hours_in / (wall / 3600):.2f} source-hours per wall-hour")
    print("| stage | videos | seconds (sum) | seconds per source-second |")
    print("|---|---|---|---|")
    for name, t in s.stage_timings.items():
        print(f"| {name} | {t.videos} | {t.seconds:.2f} | {t.seconds / max(hours_in * 3600, 1e-9):.3f} |")
    print(json.dumps({"wall_s": wall, "source_s": hours_in * 3600, "clips": s.clips}))


if __name__ == "__main__":
    main()
