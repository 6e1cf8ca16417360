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


@pytest.fixture()
def two_node_cluster(tmp_path):
    temp = Path("/tmp") / f"cnasray{os.getpid()}"  # short: Ray's socket paths have a length limit
    port = _free_port()
    # Ray 2.60 enables token authentication for `ray start --head`; every other process of the
    # cluster (worker node, driver) must then say so too and finds the token in ~/.ray/auth_token.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
                    "--include-dashboard=false", *common], check=True, env=env, capture_output=True)
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", *common],
                   check=True, env=env, capture_output=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        # stop only this cluster's processes (`ray stop` would stop every Ray on the machine)
        out = subprocess.run(["pgrep", "-f", f"{temp}|127.0.0.1:{port}"], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_ingest_on_a_two_node_cluster_matches_the_local_run(tmp_path, media_dir, two_node_cluster):
    lines = ["path,id"] + [f"{media_dir / ('zh_a.mp4' if i % 2 else 'en_b.mp4')},vid{i}" for i in range(4)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    sets = ["clips.mode=fixed", "clips.window_s=1", "normalize.max_height=120", "shots.enabled=false", "pose.enabled=false",
            "speech.enabled=false"]
    args = [sys.executable, "-m", "pipeline.cli", "ingest", "--sources", str(tmp_path / "s.csv"), *sum((["--set", s] for s in sets), [])]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    cluster = subprocess.run([*args, "--out", str(tmp_path / "cluster"), "--address", two_node_cluster], env=env,
                             capture_output=True, text=True, timeout=600)
    assert cluster.returncode == 0, cluster.stdout[-2000:] + cluster.stderr[-2000:]
    assert f"ray={two_node_cluster}" in cluster.stderr
    stats = json.loads((tmp_path / "cluster" / "stats.json").read_text())
    assert stats["ray_address"] == two_node_cluster and stats["videos_ok"] == 4
    local = subprocess.run([*args, "--out", str(tmp_path / "local"), "--num-cpus", "2"], env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-2000:]
    assert (tmp_path / "cluster" / "manifest.jsonl").read_text() == (tmp_path / "local" / "manifest.jsonl").read_text()
