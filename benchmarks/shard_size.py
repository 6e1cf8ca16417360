"""Bytes per clip-second of each shard member as the 1.x writers and as the 2.0 writers (issue 28,
leaner shards) write the same content, and the landmark codec's error in pixels.

    .venv/bin/python benchmarks/shard_size.py [--shards demo_out/run/shards] [--work demo_out/run/work]

Both columns are made from the samples of a shards folder (whichever code wrote them), without
re-running the DAG. ``pose.npz``: 1.x = the dense float32 arrays through ``np.savez_compressed``
(what ``write_npz`` wrote), 2.0 = ``stages.pose.write_clip_pose`` (fixed-point landmarks).
``json``: 2.0 = ``ClipRecord.model_dump_json()`` (``schema_version`` at the top only), 1.x = that
plus ``"schema_version":"<v>",`` in every nested record. ``mp4`` and ``wav`` are as in the shards.
With ``--work``, the work dir's video-level ``media/*/pose.npz`` too, per video-second: 1.x =
``np.savez`` of every face slot, 2.0 = ``save_pose`` (empty slots left out; still uncompressed).
The error table compares the fixed-point landmarks with the float32 ones of every clip and video,
in pixels of a 1920×1080 frame (x and z times 1920, y times 1080). Prints markdown tables for
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tarfile
import tempfile
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from geometry.landmark_codec import FIXED_POINT_KEYS, decode_landmarks, decode_pose_member, encode_landmarks  # noqa: E402
from schemas import ClipRecord, Record  # noqa: E402
from stages.pose import load_pose, save_pose, write_clip_pose  # noqa: E402

SCALE = np.array([1920.0, 1080.0, 1920.0])  # x, y of the frame; z is in units of the width


def samples(shards: str):
    """(key, {suffix: bytes}) of every sample of the shards in a folder."""
    for path in sorted(glob.glob(os.path.join(shards, "*.tar"))):
        members: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, suffix = m.name.partition(".")
                members[key][suffix] = tar.extractfile(m).read()
        yield from members.items()


def nested_records(value) -> int:
    """Records nested in a record's fields (each carried its own ``schema_version`` in 1.x json)."""
    if isinstance(value, Record):
        return sum(nested_records(getattr(value, f)) + isinstance(getattr(value, f), Record) for f in type(value).model_fields)
    if isinstance(value, (list, tuple)):
        return sum(nested_records(v) + isinstance(v, Record) for v in value)
    if isinstance(value, dict):
        return sum(nested_records(v) + isinstance(v, Record) for v in value.values())
    return 0


def npz_bytes(arrays: dict, save=np.savez_compressed) -> int:
    buf = io.BytesIO()
    save(buf, **arrays)
    return len(buf.getvalue())


def px_error(values: np.ndarray) -> float:
    """Largest error of the codec on ``values`` (..., 3) in pixels of a 1920×1080 frame; NaN must stay NaN."""
    values = np.asarray(values, np.float32)
    back = decode_landmarks(encode_landmarks(values))
    assert (np.isnan(back) == np.isnan(values)).all()
    err = np.abs(back.astype(np.float64) - values) * (SCALE if values.shape[-1] == 3 else 1.0)
    return float(np.nanmax(err, initial=0.0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default="demo_out/run/shards")
    ap.add_argument("--work", default="demo_out/run/work", help="work dir with media/*/pose.npz ('' to skip)")
    args = ap.parse_args()

    before: dict[str, int] = defaultdict(int)
    after: dict[str, int] = defaultdict(int)
    seconds, errors, n = 0.0, defaultdict(float), 0
    with tempfile.TemporaryDirectory() as tmp:
        for key, members in samples(args.shards):
            clip = ClipRecord.model_validate_json(members["json"])
            seconds += clip.num_frames / clip.fps
            n += 1
            for suffix in ("mp4", "wav", "flame.npz"):
                if suffix in members:
                    before[suffix] += len(members[suffix])
                    after[suffix] += len(members[suffix])
            text = clip.model_dump_json().encode()
            after["json"] += len(text)
            before["json"] += len(text) + nested_records(clip) * len(f'"schema_version":"{clip.schema_version}",')
            if "pose.npz" in members:
                arrays = decode_pose_member(members["pose.npz"])
                before["pose.npz"] += npz_bytes(arrays)
                path = os.path.join(tmp, f"{key}.pose.npz")
                write_clip_pose(path, arrays)
                after["pose.npz"] += os.path.getsize(path)
                back = decode_pose_member(open(path, "rb").read())
                for name in FIXED_POINT_KEYS:
                    if name in arrays:
                        errors[f"clip {name}"] = max(errors[f"clip {name}"], px_error(arrays[name]))
                        assert np.array_equal(np.isnan(back[name]), np.isnan(arrays[name]))

        video_before = video_after = 0
        video_s = 0.0
        for path in sorted(glob.glob(os.path.join(args.work, "media", "*", "pose.npz"))) if args.work else []:
            pose = load_pose(path)
            video_s += len(pose["part_confidences"]) / float(pose["fps"])
            video_before += npz_bytes({k: np.asarray(v) for k, v in pose.items() if k != "face"}, np.savez)
            new = os.path.join(tmp, "video.pose.npz")
            save_pose(new, pose)
            video_after += os.path.getsize(new)
            again = load_pose(new)
            for name in ("faces", "body", "left_hand", "right_hand"):
                np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(pose[name]), err_msg=name)
                errors[f"video {name}"] = max(errors[f"video {name}"], px_error(np.asarray(pose[name])))

    print(f"{n} samples, {seconds:.1f} clip-seconds ({args.shards})\n")
    print("| member | 1.x, bytes per clip-second | 2.0 | 2.0 / 1.x |\n|---|---|---|---|")
    for suffix in sorted(before, key=lambda s: -before[s]):
        print(f"| {suffix} | {before[suffix] / seconds:,.0f} | {after[suffix] / seconds:,.0f} | {after[suffix] / before[suffix]:.2f} |")
    tb, ta = sum(before.values()), sum(after.values())
    print(f"| **sample** | {tb / seconds:,.0f} | {ta / seconds:,.0f} | {ta / tb:.2f} |")
    if video_s:
        print(f"| work dir `media/*/pose.npz` (per video-second, {video_s:.1f} s) | {video_before / video_s:,.0f} | "
              f"{video_after / video_s:,.0f} | {video_after / video_before:.2f} |")
    print("\n| array | max error, px at 1920×1080 |\n|---|---|")
    for name, e in errors.items():  # the visibility is a probability: its error is absolute, not in px
        print(f"| {name} | {e:.2g} (absolute) |" if name.endswith("visibility") else f"| {name} | {e:.4f} |")


if __name__ == "__main__":
    main()
