"""Vision stages on CPU: frames per second of shot detection and of the MediaPipe pose stage
(pose + hands + face mesh + face detection per frame), with stride 1 and 2, and of clip selection.

    .venv/bin/python benchmarks/vision.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video
from stages.normalize import NormalizeOptions, normalize  # noqa: E402
from stages.frames import read_frames  # noqa: E402
from stages.pose import PoseModels, PoseOptions, analyse_frame, extract_pose  # noqa: E402
from stages.select import SelectOptions, select_clips  # noqa: E402
from stages.shots import detect_shots  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cnas-vision-")
    make_talking_video(os.path.join(d, "v.mp4"), DEMO_VIDEOS[0])
    media = normalize("v", os.path.join(d, "v.mp4"), os.path.join(d, "n"), NormalizeOptions(max_height=args.height))
    n = media.num_frames
    print(f"video: {n} frames, {media.width}x{media.height}, {media.duration_s:.1f} s")
    print("| stage | frames/s | x real time (25 fps) |")
    print("|---|---|---|")
    t = time.perf_counter()
    shots = detect_shots(media)
    dt = time.perf_counter() - t
    print(f"| shots (PySceneDetect content) | {n / dt:.1f} | {n / dt / 25:.2f} |")
    for stride in (1, 2):
        models = PoseModels(PoseOptions(stride=stride))
        analyse_frame(models, next(read_frames(media.video_path, media.width, media.height)).copy())  # warm-up
        t = time.perf_counter()
        arrays = extract_pose(models, media.video_path, media.width, media.height, media.fps, n)
        dt = time.perf_counter() - t
        print(f"| pose stride {stride} (pose+hands+mesh+face det) | {n / dt:.1f} | {n / dt / 25:.2f} |")
    t = time.perf_counter()
    for _ in range(20):
        select_clips(n, media.fps, media.width, media.height, shots, None, arrays, SelectOptions(crop="upper_body"))
    dt = (time.perf_counter() - t) / 20
    print(f"| clip selection | {n / dt:.0f} | {n / dt / 25:.0f} |")


if __name__ == "__main__":
    main()
