"""Audio-visual sync: what it costs next to the pose stage, and the confidence distributions the
default thresholds come from.

    .venv/bin/python benchmarks/sync.py cost [--seconds 30]
    .venv/bin/python benchmarks/sync.py distributions

``cost`` builds a talking astronaut (real speech from pyannote's sample.wav, looped), runs the pose
stage with one and with two face slots, head pose on the face slots (inside the pose stage; timed
alone here), the sync stage's features and active-speaker windows, and the clip-level decision of
every 10-s clip; prints seconds per video-minute and the ratio of sync + head pose to the pose
stage. ``distributions`` runs the test fixtures (tests/talking_fixtures.py: 4 photos × 3 utterances
genuine, every dub pairing, two frozen faces under every utterance) and prints the clip-level
confidence of each kind with the offsets. Copy the printed lines into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from geometry.head_pose import head_poses_deg  # noqa: E402
from stages.pose import PoseModels, PoseOptions, extract_pose  # noqa: E402
from stages.select import sync_decision  # noqa: E402
from stages.sync import SyncOptions, sync_features  # noqa: E402


def cost(seconds: float) -> None:
    import soundfile as sf

    from talking_fixtures import package_file, talking_video

    wav, sr = sf.read(package_file("pyannote.audio", "sample", "sample.wav"), dtype="float32")
    speech = np.tile(wav[int(6.5 * sr):], int(np.ceil(seconds / 23.5)))[: int(seconds * sr)]
    d = tempfile.mkdtemp(prefix="cnas-sync-")
    timings = {}
    for k in (1, 2):
        models = PoseModels(PoseOptions(max_faces=k))
        t0 = time.perf_counter()
        video = talking_video(d, f"v{k}", "astronaut", speech, speech, sr, models)
        timings[f"pose_{k}"] = time.perf_counter() - t0  # encode + normalise + pose; the pose part below
        m = video.media
        t0 = time.perf_counter()
        extract_pose(models, m.video_path, m.width, m.height, m.fps, m.num_frames)
        timings[f"pose_{k}"] = time.perf_counter() - t0
    pose = video.pose
    t0 = time.perf_counter()
    for s in range(pose["faces"].shape[1]):
        head_poses_deg(pose["faces"][:, s], m.width, m.height)
    timings["head"] = time.perf_counter() - t0
    opts = SyncOptions()
    t0 = time.perf_counter()
    feats = sync_features(video.audio, 16000, m.fps, pose, opts)
    for f0 in range(0, m.num_frames - 250, 250):
        sync_decision(feats, 0, f0, f0 + 250, None, opts)
    timings["sync"] = time.perf_counter() - t0
    per_min = 60.0 / m.duration_s
    extra = timings["sync"] + timings["head"]
    print(f"{m.num_frames} frames {m.width}x{m.height}: pose stage {timings['pose_2'] * per_min:.1f} s per video-minute with 2 face slots "
          f"({timings['pose_1'] * per_min:.1f} s with 1: x{timings['pose_2'] / timings['pose_1']:.2f}); head pose {timings['head'] * per_min:.2f} s, "
          f"sync (features, windows, clip decisions) {timings['sync'] * per_min:.2f} s; sync + head pose = "
          f"{100 * extra / timings['pose_2']:.2f} % of the pose stage")


def distributions() -> None:
    from talking_fixtures import fit_length, photos, talking_video, utterances
    from scipy.signal import resample_poly

    d = tempfile.mkdtemp(prefix="cnas-syncdist-")
    models = PoseModels()
    utts = utterances()
    audio16 = {n: (a if sr == 16000 else resample_poly(a, 16000, sr).astype(np.float32)) for n, a, sr in utts}
    opts = SyncOptions()
    rows: dict[str, list[tuple[int, float]]] = {"genuine": [], "dub": [], "voice_over": []}

    def clip(video, audio):
        feats = sync_features(audio, 16000, video.media.fps, video.pose, opts)
        ids = feats["faces_track"]
        track = int(ids[ids >= 0][0])
        rec, _ = sync_decision(feats, track, 0, video.media.num_frames, None, opts)
        return rec.offset_frames, rec.confidence

    for i, photo in enumerate(photos()):
        for j in range(3):
            name, audio, sr = utts[(i + j) % len(utts)]
            v = talking_video(d, f"g{i}_{name}", photo, audio, audio, sr, models)
            rows["genuine"].append(clip(v, v.audio))
            rows["dub"] += [clip(v, fit_length(a, len(v.audio))) for o, a in audio16.items() if o != name]
    for i, photo in enumerate(photos()[:2]):
        name, audio, sr = utts[i]
        v = talking_video(d, f"frozen{i}", photo, audio, audio, sr, models, frozen=True)
        rows["voice_over"] += [clip(v, fit_length(a, len(v.audio))) for a in audio16.values()]
    for kind, vals in rows.items():
        conf = np.array([c for _, c in vals])
        near = np.array([c for o, c in vals if abs(o) <= opts.max_offset_frames] or [0.0])
        print(f"{kind}: n={len(vals)} confidence min {conf.min():.3f} median {np.median(conf):.3f} max {conf.max():.3f}; "
              f"with |offset| <= {opts.max_offset_frames}: max {near.max():.3f}; offsets {sorted(o for o, _ in vals)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("cost", "distributions"))
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    cost(args.seconds) if args.what == "cost" else distributions()


if __name__ == "__main__":
    main()
