"""A real two-node Ray cluster on this machine (`ray start` head + worker as separate processes)
running `cnas ingest --address`. Slow (starts two raylets): `make test-all` or `-m slow`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster(str):
    """The head's address, and how to kill the worker node (its raylet and every process under it)."""

    worker_port: int

    def kill_worker_node(self) -> int:
        raylets = subprocess.run(["pgrep", "-f", f"raylet.*node_manager_port={self.worker_port}"], capture_output=True,
                                 text=True).stdout.split()
        killed = 0
        for pid in raylets:
            children = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
            for p in [pid, *children]:
                try:
                    os.kill(int(p), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        return killed


@pytest.fixture()
def two_node_cluster(tmp_path):
    temp = Path("/tmp") / f"cnasray{os.getpid()}"  # short: Ray's socket paths have a length limit
    port, worker_port = _free_port(), _free_port()
    # Ray 2.60 enables token authentication for `ray start --head`; every other process of the
    # cluster (worker node, driver) must then say so too and finds the token in ~/.ray/auth_token.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
                    "--include-dashboard=false", *common], check=True, env=env, capture_output=True)
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                    f"--node-manager-port={worker_port}", *common], check=True, env=env, capture_output=True)
    cluster = Cluster(f"127.0.0.1:{port}")
    cluster.worker_port = worker_port
    try:
        yield cluster
    finally:
        # stop only this cluster's processes (`ray stop` would stop every Ray on the machine)
        out = subprocess.run(["pgrep", "-f", f"{temp}|127.0.0.1:{port}"], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


SETS = ["clips.mode=fixed", "clips.window_s=1", "normalize.max_height=120", "shots.enabled=false", "pose.enabled=false",
        "speech.enabled=false", "curate.enabled=false"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def _ingest_args(tmp_path, media_dir, videos: int) -> list[str]:
    lines = ["path,id"] + [f"{media_dir / ('zh_a.mp4' if i % 2 else 'en_b.mp4')},vid{i}" for i in range(videos)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    return [sys.executable, "-m", "cnas", "ingest", "--sources", str(tmp_path / "s.csv"), *sum((["--set", s] for s in SETS), [])]


def _local_manifest(tmp_path, args) -> str:
    local = subprocess.run([*args, "--out", str(tmp_path / "local"), "--num-cpus", "2"], env={**ENV, "RAY_AUTH_MODE": "disabled"},
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-2000:]
    return (tmp_path / "local" / "manifest.jsonl").read_text()


def test_ingest_on_a_two_node_cluster_matches_the_local_run(tmp_path, media_dir, two_node_cluster):
    args = _ingest_args(tmp_path, media_dir, 4)
    env = ENV
    cluster = subprocess.run([*args, "--out", str(tmp_path / "cluster"), "--address", two_node_cluster], env=env,
                             capture_output=True, text=True, timeout=600)
    assert cluster.returncode == 0, cluster.stdout[-2000:] + cluster.stderr[-2000:]
    assert f"ray={two_node_cluster}" in cluster.stderr
    stats = json.loads((tmp_path / "cluster" / "stats.json").read_text())
    assert stats["ray_address"] == two_node_cluster and stats["videos_ok"] == 4
    assert (tmp_path / "cluster" / "manifest.jsonl").read_text() == _local_manifest(tmp_path, args)


def test_worker_node_killed_mid_run_loses_and_duplicates_nothing(tmp_path, media_dir, two_node_cluster):
    """SIGKILL the worker node (raylet and its workers) once some videos are through normalize: the
    run finishes — or a re-run does — with exactly the manifest of a clean local run."""
    args = _ingest_args(tmp_path, media_dir, 10) + ["--out", str(tmp_path / "cluster"), "--address", two_node_cluster]
    run = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ledger = tmp_path / "cluster" / "work" / "ledger"
    deadline = time.time() + 300
    while len(list(ledger.glob("*/normalize.json"))) < 2 and time.time() < deadline and run.poll() is None:
        time.sleep(0.1)
    assert run.poll() is None, "the run ended before the node could be killed"
    assert two_node_cluster.kill_worker_node() > 0
    out, _ = run.communicate(timeout=900)
    first_rc = run.returncode
    if first_rc != 0:  # the driver may give up on the lost node's tasks; the ledger keeps what finished
        again = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    manifest = (tmp_path / "cluster" / "manifest.jsonl").read_text()
    keys = [json.loads(line)["key"] for line in manifest.splitlines()]
    assert len(keys) == len(set(keys))
    assert manifest == _local_manifest(tmp_path, _ingest_args(tmp_path, media_dir, 10))
    print(f"first run exit {first_rc}; {len(keys)} samples")
