"""Memory of a long video's pose arrays: extraction (heap vs memory-mapped scratch) and the clip
stages' access (a compressed pose.npz loaded whole vs ``save_pose``/``load_pose`` memory maps).

    .venv/bin/python benchmarks/pose_memory.py --minutes 10 --hours 1

Each measurement runs in its own process; the peak is the largest anonymous RSS (heap, not page
cache) sampled every 5 ms, minus that process's baseline after imports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stages.pose import PoseModels, PoseOptions, extract_pose, load_pose, save_pose, slice_pose  # noqa: E402


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakAnon:
    """Largest RssAnon seen while the block runs, above the level at entry."""

    def __enter__(self):
        self.base = self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_anon())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())
        self.mib = (self.peak - self.base) / 2**20


def _child(args) -> dict:
    if args.child == "extract":
        models = PoseModels(PoseOptions(stride=args.stride))
        scratch = tempfile.mkdtemp(dir=args.dir) if args.scratch else None
        t = time.perf_counter()
        with PeakAnon() as peak:
            arrays = extract_pose(models, args.video, args.size, args.size, 25.0, args.frames, *([scratch] if scratch else []))
        return {"peak_anon_mib": round(peak.mib, 1), "s": round(time.perf_counter() - t, 1), "frames": len(arrays["face"])}
    # the clip stages: the whole-video arrays selection reads, then one clip's slice after another
    t = time.perf_counter()
    with PeakAnon() as peak:
        if args.child == "load_whole":
            with np.load(args.pose) as z:
                pose = {k: z[k] for k in z.files}
        else:
            pose = load_pose(args.pose)
        T = len(pose["part_confidences"])
        float(np.nanmean(pose["part_boxes"][:, 0, 3] - pose["part_boxes"][:, 0, 1]))  # what selection reads
        for f0 in range(0, T - 100, max(100, T // 200)):
            clip = slice_pose(pose, f0, f0 + 100)
            float(np.nansum(clip["face"]))
    return {"peak_anon_mib": round(peak.mib, 1), "s": round(time.perf_counter() - t, 2)}


def _run_child(*extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _long_pose(frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Pose arrays of ``frames`` frames with landmark-like values (smooth tracks plus jitter: floats
    that compress like real ones, not the runs of NaN a blank test video would give)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)[:, None, None] / 25.0
    out = {}
    for key, n in (("body", 33), ("face", 478), ("left_hand", 21), ("right_hand", 21)):
        base = rng.uniform(0.2, 0.8, (1, n, 3)).astype(np.float32)
        out[key] = (base + 0.01 * np.sin(t + base) + rng.normal(0, 1e-3, (frames, n, 3))).astype(np.float32)
    out["body_visibility"] = rng.uniform(0, 1, (frames, 33)).astype(np.float32)
    out["body_presence"] = np.full((frames, 33), np.nan, np.float32)
    out["part_confidences"] = rng.uniform(0, 1, (frames, 5)).astype(np.float32)
    out["part_present"] = out["part_confidences"] > 0.1
    out["part_boxes"] = rng.uniform(0, 500, (frames, 5, 4)).astype(np.float32)
    for key in ("left_hand_score", "right_hand_score", "face_sharpness"):
        out[key] = rng.uniform(0, 1, frames).astype(np.float32)
    out["face_track"] = np.zeros(frames, np.int32)
    out["num_people"] = np.ones(frames, np.int32)
    out["interpolated"] = np.zeros(frames, bool)
    out["part_names"] = np.array(["face", "mouth", "left_hand", "right_hand", "torso"])
    out["fps"] = np.array(25.0, np.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the video the extraction runs over")
    ap.add_argument("--hours", type=float, default=1.0, help="length of the video whose pose file the clip stages read")
    ap.add_argument("--size", type=int, default=96, help="frame side for the extraction video (decoding cost only)")
    ap.add_argument("--stride", type=int, default=25, help="MediaPipe on every stride-th frame (the rest interpolated)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    ap.add_argument("--pose", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="cnas-posemem-") as d:
        frames = int(args.minutes * 60 * 25)
        video = os.path.join(d, "long.mp4")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={args.size}x{args.size}:rate=25",
                        "-t", str(args.minutes * 60), "-pix_fmt", "yuv420p", video], check=True)
        print(f"extraction: {args.minutes:g} min at 25 fps ({frames} frames), MediaPipe every {args.stride}th frame")
        print("| landmarks | peak anon RSS (MiB) | s |\n|---|---|---|")
        common = ["--child", "extract", "--video", video, "--frames", str(frames), "--size", str(args.size),
                  "--stride", str(args.stride), "--dir", d]
        for label, extra in (("in memory", []), ("memory-mapped scratch", ["--scratch"])):
            r = _run_child(*common, *extra)
            print(f"| {label} | {r['peak_anon_mib']} | {r['s']} |")

        T = int(args.hours * 3600 * 25)
        arrays = _long_pose(T)
        old, new = os.path.join(d, "old.npz"), os.path.join(d, "new.npz")
        np.savez_compressed(old, **arrays)
        save_pose(new, arrays)
        del arrays
        print(f"\nclip stages: pose of {args.hours:g} h ({T} frames), selection arrays + 200 clip slices of 100 frames")
        print("| pose.npz | size on disk (MiB) | peak anon RSS (MiB) | s |\n|---|---|---|---|")
        for label, path, child in (("compressed, loaded whole (before)", old, "load_whole"),
                                   ("uncompressed, memory-mapped (save_pose/load_pose)", new, "load_mapped")):
            r = _run_child("--child", child, "--pose", path)
            print(f"| {label} | {os.path.getsize(path) / 2**20:.0f} | {r['peak_anon_mib']} | {r['s']} |")


if __name__ == "__main__":
    main()
