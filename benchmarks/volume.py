"""Load and bad input at volume: N short generated sources with ~10% broken ones through the DAG
on the embedded local Ray; reports that every good source was processed and every bad one
reported, wall time, and the peak RSS of the driver and of every Ray worker process.

    .venv/bin/python benchmarks/volume.py --sources 200 [--models]

Without --models only the file stages run (download, normalize, shots, clips, shards) — the part
of the DAG whose memory must stay bounded per video; --models adds pose and speech.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.engine.config import load_config
from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video
from pipeline.engine.runner import run_ingest

BROKEN = ("empty", "text", "truncated", "missing")


def _descendants(root: int) -> dict[int, str]:
    """pid -> process name of every descendant of ``root`` (read from /proc; Linux)."""
    parent, name = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        name[int(entry)] = comm
    out, frontier = {}, {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in out}
        out.update({p: name[p] for p in frontier})
    return out


def _rss_mib(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def sample_rss(stop: threading.Event, peaks: dict[str, float]) -> None:
    while not stop.is_set():
        for pid, comm in _descendants(os.getpid()).items():
            key = "ray task/actor worker" if comm.startswith("ray::") or "worker" in comm else comm
            peaks[key] = max(peaks[key], _rss_mib(pid))
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--models", action="store_true")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cnas-volume-")
    good = []
    for v in DEMO_VIDEOS[:2]:
        path = os.path.join(d, f"{v.name}.mp4")
        make_talking_video(path, v)
        good.append(path)
    data = open(good[0], "rb").read()
    open(os.path.join(d, "empty.mp4"), "wb").close()
    open(os.path.join(d, "text.mp4"), "w").write("not a video\n")
    open(os.path.join(d, "truncated.mp4"), "wb").write(data[: len(data) // 3])
    lines, n_bad = ["path,id"], 0
    for i in range(args.sources):
        if i % 10 == 9:  # every tenth source is broken
            kind = BROKEN[(i // 10) % len(BROKEN)]
            lines.append(f"{os.path.join(d, kind + '.mp4') if kind != 'missing' else os.path.join(d, 'nowhere.mp4')},bad{i:04d}")
            n_bad += 1
        else:
            lines.append(f"{good[i % 2]},good{i:04d}")
    with open(os.path.join(d, "s.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    sets = ["normalize.max_height=240", "clips.min_clip_s=1", "clips.min_face_px=0"]
    if not args.models:
        sets += ["clips.mode=fixed", "pose.enabled=false", "speech.enabled=false", "curate.enabled=false"]
    peaks: dict[str, float] = defaultdict(float)
    stop = threading.Event()
    watcher = threading.Thread(target=sample_rss, args=(stop, peaks), daemon=True)
    watcher.start()
    t = time.perf_counter()
    result = run_ingest(os.path.join(d, "s.csv"), os.path.join(d, "run"), load_config(None, sets), echo=lambda m: None)
    wall = time.perf_counter() - t
    stop.set()
    watcher.join()
    s = result.stats
    bad_ids = {f.video_id for f in result.failures}
    print(f"sources {args.sources} ({n_bad} broken), models={'on' if args.models else 'off'}: "
          f"ok {s.videos_ok}, failed {s.videos_failed}, clips {s.clips}, wall {wall:.1f} s")
    print(f"every good source processed: {s.videos_ok == args.sources - n_bad}; every bad one reported: "
          f"{bad_ids == {f'bad{i:04d}' for i in range(args.sources) if i % 10 == 9}}; reasons {s.failures_by_reason}")
    print(f"peak RSS driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for name, mib in sorted(peaks.items(), key=lambda kv: -kv[1])[:8]:
        print(f"peak RSS {name}: {mib:.0f} MiB")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
