"""What the real-media checks of the normalize stage cost: the ``idet`` interlace probe is the only
extra decoding pass (stream start times and display matrix come from the same ffprobe call).

    .venv/bin/python benchmarks/normalize_probe.py [--videos 3] [--seconds 60] [--size 1280x720] [--repeats 2]

Normalises N generated videos (moving test pattern + tone) with ``deinterlace=auto`` (idet runs)
and ``deinterlace=never`` (no probe), alternating the order, and prints the median seconds of each
and their ratio. Copy the printed line into docs/BENCHMARKS.md with the command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from media_fixtures import plain_video  # noqa: E402
from stages.normalize import NormalizeOptions, normalize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    root = tempfile.mkdtemp(prefix="cnas-norm-bench-")
    sources = []
    for i in range(args.videos):
        path = os.path.join(root, f"v{i}.mp4")
        plain_video(path, (w, h), seconds=args.seconds)
        sources.append(path)
    times: dict[str, list[float]] = {"auto": [], "never": []}
    for r in range(args.repeats):
        order = ("auto", "never") if r % 2 == 0 else ("never", "auto")
        for mode in order:
            for i, src in enumerate(sources):
                t0 = time.perf_counter()
                normalize(f"v{i}", src, os.path.join(root, f"out_{mode}_{i}"), NormalizeOptions(deinterlace=mode))
                times[mode].append(time.perf_counter() - t0)
    auto, never = statistics.median(times["auto"]), statistics.median(times["never"])
    print(f"{args.videos} videos x {args.seconds:.0f} s {w}x{h}, {args.repeats} repeats: normalize with idet {auto:.2f} s, "
          f"without {never:.2f} s (median per video) -> probe overhead {100 * (auto / never - 1):+.1f} %")


if __name__ == "__main__":
    main()
