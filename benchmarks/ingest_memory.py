"""Peak memory of every process of an ingest run, for a short and a long input: does any worker's
memory grow with the length of a video?

    .venv/bin/python benchmarks/ingest_memory.py --minutes 10 60 [--talk-s 120] [--keep DIR]

Each input is the same generated news episode (``benchmarks/news_mix.py``: anchor, B-roll under a
voice-over, wide shot, two-shot, silence; ``--talk-s`` seconds) followed by silent B-roll without
faces up to ``--minutes``. So the dense models (face mesh, body, identity, sync) get the same
candidate spans in both runs, and what differs is the length every whole-video pass goes over:
normalize, shots, the speech stage's VAD/ASR/diarization over the whole audio, the cascade's face
scan, candidate masks, the pose arrays of the whole video, clip selection and the audio filters.

``cnas ingest`` runs with every default (all stages, cascade on) on an embedded Ray with 2 CPUs, and
the news-mix benchmark's settings (``clips.min_face_px=32`` for these 480-px frames, language en).
A sampler reads ``/proc`` every 0.2 s for every process under the ingest process (driver, raylet,
GCS, Ray workers, model actors, ffmpeg) and keeps each one's peak anonymous resident set (RssAnon:
heap and private memory; the pages of memory-mapped files are page cache); a Ray worker is
labelled by the tasks it ran (its process title). Printed: the peak of each kind of process for each
input, and the ratio long/short.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids[ppid].append(int(entry))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _rss_and_title(pid: int) -> tuple[int, str] | None:
    """(anonymous resident bytes, command line): heap and private memory, not the pages of files the
    process maps (the pose stage's memory-mapped scratch arrays and wavs are page cache the kernel
    can drop; VmRSS would count them)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:")), 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return None
    return rss, title


def label(title: str) -> str:
    """A kind of process from its command line / Ray process title."""
    if title.startswith("ray::"):
        name = title.split()[0][5:]
        for stage in ("Speech", "Pose", "Identity", "Sync", "Flame"):  # model actors are named after their stage
            if stage in name:
                return f"model actor: {stage.lower()}"
        return "Ray worker (file stages)" if name not in ("IDLE", "") else "Ray worker (idle)"
    words = title.split()
    exe = os.path.basename(words[0]) if words else "?"
    if "default_worker.py" in title:  # a Ray worker before it takes its first task's title
        return "Ray worker (idle)"
    if exe in ("ffmpeg", "ffprobe", "raylet", "gcs_server"):
        return exe
    if "cnas" in words:
        return "driver (cnas ingest)"
    for name in ("dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if name in title:
            return name
    return exe


class Sampler:
    """Peak RSS per process under ``pid``, and the labels each process had, every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every = pid, every
        self.peak: dict[int, int] = {}
        self.labels: dict[int, set[str]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in _tree(self.pid):
                got = _rss_and_title(pid)
                if got and got[1]:  # an exited process has no command line
                    self.peak[pid] = max(self.peak.get(pid, 0), got[0])
                    self.labels[pid].add(label(got[1]))
            self._stop.wait(self.every)

    def by_kind(self) -> dict[str, float]:
        """Peak MiB of each kind of process (a worker that ran several kinds counts for each)."""
        out: dict[str, float] = {}
        for pid, rss in self.peak.items():
            kinds = self.labels[pid] - {"Ray worker (idle)"} or self.labels[pid]
            for kind in kinds:
                out[kind] = max(out.get(kind, 0.0), rss / 2**20)
        return out


def build_input(path: str, minutes: float, talk: str, filler: str) -> float:
    """``talk`` then ``filler`` repeated up to ``minutes`` (stream copy: same encoding); returns seconds."""
    from news_mix import _seconds

    parts, total, filler_s = [talk], _seconds(talk), _seconds(filler)
    while total + filler_s <= minutes * 60 + 1:
        parts.append(filler)
        total += filler_s
    listing = path + ".txt"
    Path(listing).write_text("".join(f"file '{p}'\n" for p in parts))
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", listing, "-c", "copy", path],
                   check=True)
    return _seconds(path)


def main() -> None:
    from news_mix import ENC, SIZE, _ff, build_episode, build_segments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    ap.add_argument("--talk-s", type=float, default=120.0, help="seconds of news episode at the start of every input")
    ap.add_argument("--keep", help="folder for the inputs and runs (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="cnas-mem-"))
    root.mkdir(parents=True, exist_ok=True)
    segments = build_segments(str(root / "segments"))
    talk = str(root / "talk.mp4")
    if not os.path.exists(talk):
        build_episode(talk, segments, args.talk_s, seed=0)
    filler = str(root / "filler.mp4")
    if not os.path.exists(filler):  # a minute of B-roll without faces or sound
        _ff("-f", "lavfi", "-i", f"testsrc2=size={SIZE}x{SIZE}:rate=25", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-t", "60",
            *ENC, filler)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    results = {}
    for minutes in args.minutes:
        video = str(root / f"input_{minutes:g}min.mp4")
        seconds = build_input(video, minutes, talk, filler)
        (root / f"s_{minutes:g}.csv").write_text(f"path,id,language\n{video},news{minutes:g},en\n")
        out = root / f"run_{minutes:g}min"
        cmd = [sys.executable, "-m", "cnas", "ingest", "--sources", str(root / f"s_{minutes:g}.csv"), "--out", str(out),
               "--num-cpus", "2", *sum((["--set", s] for s in ["normalize.max_height=480", "clips.min_face_px=32", *args.set]), [])]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(root / f"ingest_{minutes:g}.log", "w"))
        with Sampler(proc.pid) as sampler:
            rc = proc.wait()
        if rc != 0:
            raise SystemExit(f"cnas ingest failed ({rc}); see {root / f'ingest_{minutes:g}.log'}")
        import json

        stats = json.loads((out / "stats.json").read_text())
        results[minutes] = (seconds, time.perf_counter() - t0, sampler.by_kind(), stats)
        print(f"{minutes:g} min: {seconds:.0f} s of source, wall {results[minutes][1]:.0f} s, clips {stats.get('clips')}", flush=True)
    kinds = sorted({k for r in results.values() for k in r[2]}, key=lambda k: -max(r[2].get(k, 0) for r in results.values()))
    heads = [f"{m:g} min ({r[0]:.0f} s)" for m, r in results.items()]
    print(f"\npeak anonymous RSS (MiB) per kind of process; inputs: {args.talk_s:g} s news episode + silent no-face B-roll")
    print("| process | " + " | ".join(heads) + " | last / first |")
    print("|---|" + "---|" * len(heads) + "---|")
    first, last = results[args.minutes[0]][2], results[args.minutes[-1]][2]
    for k in kinds:
        vals = [f"{r[2][k]:.0f}" if k in r[2] else "-" for r in results.values()]
        ratio = f"{last[k] / first[k]:.2f}" if k in first and k in last and first[k] else "-"
        print(f"| {k} | " + " | ".join(vals) + f" | {ratio} |")
    for m, r in results.items():
        per = {s: round(t["seconds"], 1) for s, t in r[3].get("stage_timings", {}).items()}
        print(f"stage seconds, {m:g} min: {per}")


if __name__ == "__main__":
    main()
