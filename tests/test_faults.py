"""Fault injection in training: a Ray Train worker SIGKILLed mid-epoch → Ray Train restarts the
worker group (FailureConfig) and training goes on from the newest checkpoint to the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

from facial_data import write_facial_shards
from trainers.facial.config import load_facial_config
from trainers.facial.train import run_training


def _train_worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


def test_killed_training_worker_resumes_from_the_last_checkpoint(tmp_path, ray_session):
    shards = write_facial_shards(tmp_path / "shards", clips=16, frames=50)
    cfg = load_facial_config("tiny", [f"data.urls={json.dumps(shards)}", f"run.storage_path={tmp_path / 'runs'}",
                                      "run.num_workers=2", "run.max_failures=1", "train.binding_steps=40",
                                      "train.diffusion_steps=40", "train.checkpoint_every=10", "train.log_every=10"])
    run_dir = tmp_path / "runs" / "facial-tiny"
    killed: list[int] = []

    def registered() -> str:
        # a checkpoint counts once Ray Train's controller has registered it (and snapshotted it)
        try:
            snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
            return (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name", "")
        except (OSError, ValueError):
            return ""

    def kill_when_checkpointed():
        deadline = time.time() + 300
        while registered() < "step_00000020" and time.time() < deadline:
            time.sleep(0.05)
        pids = _train_worker_pids()
        if pids:
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    killer = threading.Thread(target=kill_when_checkpointed, daemon=True)
    killer.start()
    result = run_training(cfg)
    killer.join(timeout=10)
    assert killed, "no training worker process was found to kill"
    assert result.error is None and result.metrics["step"] == 80
    rows = [json.loads(line) for line in (run_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    resumed = [r["step"] for r in rows if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0] >= 20 and resumed[0] % 10 == 0  # from a checkpoint at or after the kill
    steps = [r["step"] for r in rows if "event" not in r]
    assert steps[-1] == 80 and resumed[0] in steps
