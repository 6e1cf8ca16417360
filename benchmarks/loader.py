"""Training loader throughput: decoded samples per second for each view (raw, facial, paha) on
shards from a real run (pose + FLAME on files built in the official layouts, random weights).

    .venv/bin/python benchmarks/loader.py [--videos 4] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from model_builders import build_flame_files  # noqa: E402
from pipeline.engine.config import load_config
from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video
from pipeline.engine.runner import run_ingest
from trainers.data import LoaderConfig, make_loader  # noqa: E402


def write_demo_sources(d: str, videos: int, emotion: str | None = None) -> str:
    """``d/s.csv`` listing ``videos`` rows over the two astronaut demo videos (a face in every frame),
    made in ``d`` when missing; ``emotion``: a column every row gets."""
    lines = ["path,id" + (",emotion" if emotion else "")]
    for i in range(videos):
        v = DEMO_VIDEOS[i % 2]
        path = os.path.join(d, f"{v.name}.mp4")
        if not os.path.exists(path):
            make_talking_video(path, v)
        lines.append(f"{path},bench{i}" + (f",{emotion}" if emotion else ""))
    out = os.path.join(d, "s.csv")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3, help="passes over the shards per measurement")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cnas-loader-")
    assets = build_flame_files(os.path.join(d, "assets"))
    write_demo_sources(d, args.videos, emotion="happy")
    sets = [f"flame.{k}={v}" for k, v in assets.items()] + ["flame.max_landmark_error_px=1000", "speech.enabled=false", "normalize.max_height=480", "clips.max_clip_s=4", "clips.min_face_px=0"]
    result = run_ingest(os.path.join(d, "s.csv"), os.path.join(d, "run"), load_config(None, sets), echo=lambda m: None)
    shards = sorted(os.path.join(d, "run", "shards", s) for s in os.listdir(os.path.join(d, "run", "shards")))
    print(f"{result.stats.clips} clips in {len(shards)} shards (480x480 clips, 25 fps)")
    print("| view | workers | samples/s |")
    print("|---|---|---|")
    for view, kw in (("raw", {}), ("facial", {"window_frames": 50}), ("paha", {"window_frames": 16, "image_size": 256})):
        for workers in args.workers:
            cfg = LoaderConfig(urls=shards, view=view, num_workers=workers, epoch_samples=None, **kw)
            n, t = 0, time.perf_counter()
            for _ in range(args.repeats):
                n += sum(1 for _ in make_loader(cfg))
            dt = time.perf_counter() - t
            print(f"| {view} | {workers} | {n / dt:.1f} |")


if __name__ == "__main__":
    main()
