"""End-to-end ingestion throughput on 1 vs 2 Ray nodes on this machine (`ray start` head and
worker as separate processes, `cnas ingest --address`), with per-stage time shares.

    .venv/bin/python benchmarks/cluster_scaling.py --videos 12 [--cpus-per-node 1] [--stages file|all] [--no-pin]

Each node gets ``--cpus-per-node`` CPUs, so 2 nodes have twice the CPUs of 1: the ratio shows how
much of the added capacity the DAG turns into throughput (2.0 would be perfect scaling). The
embedded-Ray run with the same total CPUs is the single-process reference.

By default node i and every process it starts (raylet, workers, ffmpeg, model threads) are pinned
to their own cores with ``taskset``, as separate machines would be: unpinned, the one-node run's
workers spread their library threads and ffmpeg over both cores of this machine, so the one-node
baseline is not one node's worth of CPU. The driver (``cnas ingest --address``) is pinned with the
head node, where a driver runs on a real cluster; unpinned it would run on the second core for free
in the one-node run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pinned(node: int, cpus: int, pin: bool) -> list[str]:
    """``taskset`` prefix giving node ``node`` its own ``cpus`` cores (wrapping round this machine's)."""
    if not pin:
        return []
    n = os.cpu_count() or 1
    return ["taskset", "-c", ",".join(str((node * cpus + k) % n) for k in range(cpus))]


def start_cluster(nodes: int, cpus: int, tag: str, pin: bool = True) -> tuple[str, str]:
    temp = f"/tmp/cnasb{tag}"
    port = _port()
    common = [f"--num-cpus={cpus}", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    subprocess.run([*_pinned(0, cpus, pin), RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                    *common], check=True, env=ENV, capture_output=True)
    for i in range(1, nodes):
        subprocess.run([*_pinned(i, cpus, pin), RAY, "start", f"--address=127.0.0.1:{port}", *common], check=True, env=ENV,
                       capture_output=True)
    return f"127.0.0.1:{port}", temp


def stop_cluster(address: str, temp: str) -> None:
    port = address.rsplit(":", 1)[1]
    pattern = f"{temp}|127\\.0\\.0\\.1:{port}([^0-9]|$)"  # this cluster's processes only
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    time.sleep(2)


def ingest(sources: str, out: str, sets: list[str], extra: list[str], env: dict, prefix: list[str] = ()) -> tuple[float, dict]:
    args = [*prefix, sys.executable, "-m", "cnas", "ingest", "--sources", sources, "--out", out,
            *sum((["--set", s] for s in sets), []), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"ingest failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, json.loads(Path(out, "stats.json").read_text())


def shares(stats: dict) -> dict[str, float]:
    per = {stage: t["seconds"] for stage, t in stats.get("stage_timings", {}).items()}
    total = sum(per.values()) or 1.0
    return {k: v / total for k, v in per.items()}


def main() -> None:
    from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video

    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--stages", choices=["file", "all"], default="file", help="file: download/normalize/shots/clips only")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="let every node's processes use every core")
    ap.add_argument("--no-embedded", dest="embedded", action="store_false", help="leave out the embedded-Ray reference run")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cnas-scale-"))
    lines = ["path,id"]
    for v in DEMO_VIDEOS:
        make_talking_video(str(root / f"{v.name}.mp4"), v)
    for i in range(args.videos):
        lines.append(f"{root / DEMO_VIDEOS[i % len(DEMO_VIDEOS)].name}.mp4,scale{i:04d}")
    (root / "s.csv").write_text("\n".join(lines) + "\n")
    sets = ["clips.window_s=2", "normalize.max_height=360"]
    if args.stages == "file":
        sets += ["pose.enabled=false", "speech.enabled=false", "curate.enabled=false", "flame.enabled=false", "clips.mode=fixed"]
    results = {}
    for nodes in (1, 2):
        address, temp = start_cluster(nodes, args.cpus_per_node, f"{os.getpid()}n{nodes}", args.pin)
        try:
            results[f"{nodes} node(s)"] = ingest(str(root / "s.csv"), str(root / f"out{nodes}"), sets, ["--address", address], ENV,
                                                 _pinned(0, args.cpus_per_node, args.pin))
        finally:
            stop_cluster(address, temp)
    total = 2 * args.cpus_per_node
    if args.embedded:
        results[f"embedded, {total} CPUs"] = ingest(str(root / "s.csv"), str(root / "emb"), sets, ["--num-cpus", str(total)],
                                                     {**ENV, "RAY_AUTH_MODE": "disabled"})
    hours = next(iter(results.values()))[1]["source_hours"]
    print(f"{args.videos} videos, {hours * 3600:.0f} source-seconds, stages={args.stages}, {args.cpus_per_node} CPU(s) per node, "
          f"{'each node pinned to its own cores' if args.pin else 'not pinned'}")
    print("| run | wall s | source-hours per wall-hour | stage time shares |")
    print("|---|---|---|---|")
    for name, (wall, stats) in results.items():
        sh = ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares(stats).items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {wall:.1f} | {hours / (wall / 3600):.2f} | {sh} |")
    one, two = results["1 node(s)"][0], results["2 node(s)"][0]
    print(f"scaling 1 -> 2 nodes: {one / two:.2f}x throughput (ideal 2.00x)")


if __name__ == "__main__":
    main()
