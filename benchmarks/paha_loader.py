"""The ``paha`` training loader at the ``base`` preset's sample size (16 frames of 512²): bytes per
sample through the DataLoader's worker processes, samples per second, and the time to resume
mid-epoch — each against the way it was done before, in the same command.

    .venv/bin/python benchmarks/paha_loader.py [--videos 4] [--image-size 512] [--workers 2] [--resume-at 6]
    .venv/bin/python benchmarks/paha_loader.py --seek [--clip-s 10]

``--seek``: windows decoded from the keyframe before them (clips cut with a keyframe every
``clips.keyframe_every_s``, default 2 s) against clips cut as before (x264's default of one keyframe per 250
frames, so a clip of ≤ 10 s is one GOP) decoded from frame 0: samples/s and mp4 bytes per clip-second.

Before (emulated with today's code, same decode): every worker built float frames and the
P×S×S float part masks and sent them through shared memory; a resumed run decoded every batch it
skipped. Now: workers send uint8 frames and boxes (``expand_paha`` makes the floats and masks in the
training process, on its device), and a resume skips without decoding (``worker_skips``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

import torch  # noqa: E402

from loader import write_demo_sources  # noqa: E402  (benchmarks/loader.py)
from pipeline.engine.config import load_config  # noqa: E402
from pipeline.engine.runner import run_ingest  # noqa: E402
from trainers.data import LoaderConfig, build_dataset, expand_paha, make_loader  # noqa: E402


def nbytes(sample: dict) -> int:
    return sum(v.numel() * v.element_size() for v in sample.values() if torch.is_tensor(v))


def shards_with_pose(d: str, videos: int, clip_s: float = 4, extra: tuple[str, ...] = (), run: str = "run") -> list[str]:
    write_demo_sources(d, videos)
    sets = ["speech.enabled=false", "curate.enabled=false", "normalize.max_height=720", f"clips.max_clip_s={clip_s}",
            "clips.min_face_px=0", "clips.min_clip_s=1", "shards.max_count=2", *extra]
    run_ingest(os.path.join(d, "s.csv"), os.path.join(d, run), load_config(None, sets), echo=lambda m: None)
    return sorted(os.path.join(d, run, "shards", s) for s in os.listdir(os.path.join(d, run, "shards")))


def seek_comparison(d: str, args: argparse.Namespace) -> None:
    """Samples/s of the paha loader over clips with one GOP decoded from frame 0 (before) and with a
    keyframe a second decoded from the keyframe before the window (now); mp4 bytes per clip-second."""
    import json
    import tarfile

    import trainers.data as data

    print(f"paha view, {args.window} frames of {args.image_size}², batch 1, {args.workers} loader workers, "
          f"clips up to {args.clip_s:g} s")
    print("| clips | decode | mp4 bytes per clip-second | ms to decode a window | samples/s |")
    print("|---|---|---:|---:|---:|")
    seeking = data.decode_frames
    for name, every, seek in (("one GOP (x264's default, before)", None, False), ("keyframe every 2 s (now)", 2.0, True),
                              ("keyframe every 1 s", 1.0, True)):
        every_set = "null" if every is None else every
        shards = shards_with_pose(d, args.videos, args.clip_s, (f"clips.keyframe_every_s={every_set}",), f"run{every_set}")
        size = seconds = 0.0
        mp4s, frames = [], []
        for shard in shards:
            with tarfile.open(shard) as tar:
                for m in sorted(tar.getmembers(), key=lambda m: m.name):
                    if m.name.endswith(".mp4"):
                        size += m.size
                        mp4s.append(tar.extractfile(m).read())
                    elif m.name.endswith(".json"):
                        clip = json.loads(tar.extractfile(m).read())
                        seconds += clip["num_frames"] / clip["fps"]
                        frames.append(clip["num_frames"])
        # the decode alone: every clip's windows at evenly spread starts, the loader's image size
        tic, n = time.perf_counter(), 0
        for mp4, count in zip(mp4s, frames):
            for start in range(0, count - args.window + 1, max(1, (count - args.window) // 4)):
                seeking(mp4, list(range(start, start + args.window)), args.image_size, seek=seek)
                n += 1
        window_ms = 1000 * (time.perf_counter() - tic) / max(n, 1)
        data.decode_frames = lambda *a, _seek=seek, **kw: seeking(*a, **{**kw, "seek": _seek})
        cfg = LoaderConfig(urls=shards, view="paha", window_frames=args.window, image_size=args.image_size, batch_size=1,
                           num_workers=args.workers)
        rate = throughput(lambda: make_loader(cfg), args.repeats)[0]
        data.decode_frames = seeking
        print(f"| {name} | {'from the keyframe before the window' if seek else 'from frame 0'} | {size / seconds:,.0f} "
              f"| {window_ms:.0f} | {rate:.2f} |")
    print(f"({len(frames)} clips of {min(frames)}-{max(frames)} frames)")


class _ExpandInWorker(torch.utils.data.IterableDataset):
    """The earlier transport: samples expanded inside the DataLoader worker."""

    def __init__(self, cfg: LoaderConfig):
        self.cfg = cfg

    def __iter__(self):
        return (expand_paha(s) for s in build_dataset(self.cfg))


def throughput(make, repeats: int) -> tuple[float, int]:
    n, t = 0, time.perf_counter()
    for _ in range(repeats):
        for batch in make():
            n += len(batch["__key__"]) if isinstance(batch["__key__"], list) else 1
    return n / (time.perf_counter() - t), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--resume-at", type=int, default=6, help="batches into the epoch the resumed loader starts at")
    ap.add_argument("--seek", action="store_true", help="compare decoding from the keyframe before the window with decoding from frame 0")
    ap.add_argument("--clip-s", type=float, default=10, help="--seek: longest clip")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cnas-paha-loader-")
    if args.seek:
        return seek_comparison(d, args)
    shards = shards_with_pose(d, args.videos)
    cfg = LoaderConfig(urls=shards, view="paha", window_frames=args.window, image_size=args.image_size, batch_size=1,
                       num_workers=args.workers)
    compact = next(iter(build_dataset(cfg)))
    print(f"{len(shards)} shards; paha view, {args.window} frames of {args.image_size}², batch 1, {args.workers} loader workers")
    print("| | bytes per sample through the DataLoader | samples/s |")
    print("|---|---:|---:|")
    before = throughput(lambda: torch.utils.data.DataLoader(_ExpandInWorker(cfg), batch_size=1, num_workers=args.workers),
                        args.repeats)
    after = throughput(lambda: make_loader(cfg), args.repeats)  # expanded in this process, as batch_stream does
    print(f"| before: float frames + masks made in the workers | {nbytes(expand_paha(compact)):,} | {before[0]:.2f} |")
    print(f"| now: uint8 frames + boxes, expanded after | {nbytes(compact):,} | {after[0]:.2f} |")
    total = after[1] // args.repeats
    k = min(args.resume_at, total - 1)
    per_worker = [0] * max(args.workers, 1)  # what batch_stream records: each worker's batches so far
    for i, batch in enumerate(make_loader(cfg, compact=True)):
        if i == k:
            break
        per_worker[int(batch["__worker__"][0]) if "__worker__" in batch else 0] += 1
    rows = []
    for name, kw in (("decode and drop (before)", {"skip": k}), ("skip without decoding (now)", {"worker_skips": per_worker})):
        t = time.perf_counter()
        first = next(iter(make_loader(cfg, **kw)))
        rows.append((name, time.perf_counter() - t, first["__key__"]))
    assert rows[0][2] == rows[1][2], "both resumes must start at the same sample"
    print(f"\nresume at batch {k} of {total} (time to the first batch; both give {rows[0][2]}):")
    for name, dt, _ in rows:
        print(f"| {name} | {dt:.2f} s |")


if __name__ == "__main__":
    main()
