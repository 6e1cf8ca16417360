"""Shared by the trainer tests: run ``cnas train …`` in a subprocess, SIGKILL it mid-run, run it
again, and compare its final checkpoint with that of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CNAS = [sys.executable, "-m", "cnas"]


def cnas_train(model: str, sets: list[str]) -> subprocess.Popen:
    args = CNAS + ["train", model, "--config", "tiny"] + [x for s in sets for x in ("--set", s)]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_and_resume(model: str, sets: list[str], ref_dir: Path, run_dir: Path, first: str, last: str) -> tuple[dict, dict, str]:
    """Train to the end in ``ref_dir``; in ``run_dir`` SIGKILL once checkpoint ``first`` exists,
    re-run, and return both final ``model.pt`` payloads and the re-run's stderr. ``sets`` must not
    name ``run.storage_path`` (the two runs differ only in it)."""
    ref = cnas_train(model, sets + [f"run.storage_path={ref_dir}"])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    killed = cnas_train(model, sets + [f"run.storage_path={run_dir}"])
    ckpts = next(ref_dir.glob("*/checkpoints")).relative_to(ref_dir)
    marker = run_dir / ckpts / first
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = sorted(p.name for p in (run_dir / ckpts).glob("step_*[0-9]"))
    assert done and done[-1] != last, done  # killed mid-run
    resumed = cnas_train(model, sets + [f"run.storage_path={run_dir}"])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from {done[-1]}" in err, err[-3000:]
    a = torch.load(ref_dir / ckpts / last / "model.pt", weights_only=False)
    b = torch.load(run_dir / ckpts / last / "model.pt", weights_only=False)
    return a, b, err


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}.{k} differs after resume"
