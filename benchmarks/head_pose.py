"""What head pose costs next to the pose stage: MediaPipe on every frame vs solvePnP on every face mesh.

    .venv/bin/python benchmarks/head_pose.py [--seconds 20] [--size 720]

Builds a video of scikit-image's astronaut swaying (a frontal face in every frame), runs the pose
stage's ``extract_pose`` (which includes head pose) and times ``head_poses_deg`` alone on its face
mesh; prints both per video-minute and their ratio. Copy the printed line into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from geometry.head_pose import head_poses_deg  # noqa: E402
from pipeline.demo.inputs import _encode, _photo
from stages.normalize import NormalizeOptions, normalize  # noqa: E402
from stages.pose import PoseModels, extract_pose  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=720, help="side of the square video")
    args = ap.parse_args()
    import cv2
    import soundfile as sf

    d = tempfile.mkdtemp(prefix="cnas-headpose-")
    photo = cv2.resize(_photo("astronaut", False), (args.size + 64, args.size + 64))
    n = round(args.seconds * 25)
    frames = np.stack([photo[16 + int(12 * np.sin(i / 8)): 16 + int(12 * np.sin(i / 8)) + args.size, 32: 32 + args.size] for i in range(n)])
    sf.write(os.path.join(d, "a.wav"), 0.01 * np.sin(np.arange(int(args.seconds * 16000)) / 10.0), 16000)
    _encode(frames, os.path.join(d, "a.wav"), os.path.join(d, "v.mp4"))
    media = normalize("v", os.path.join(d, "v.mp4"), os.path.join(d, "n"), NormalizeOptions())
    t0 = time.perf_counter()
    arrays = extract_pose(PoseModels(), media.video_path, media.width, media.height, media.fps, media.num_frames)
    pose_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    head = head_poses_deg(arrays["face"], media.width, media.height)
    head_s = time.perf_counter() - t0
    per_min = 60.0 / media.duration_s
    print(f"{media.num_frames} frames {media.width}x{media.height}, faces in {np.mean(~np.isnan(head[:, 0])):.0%}: pose stage "
          f"{pose_s * per_min:.1f} s per video-minute, head pose {head_s * per_min:.2f} s per video-minute "
          f"({100 * head_s / pose_s:.2f} % of the pose stage)")


if __name__ == "__main__":
    main()
