"""The terminal of a run: third-party output in OUT/logs/, progress lines, `cnas status`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import cnas
from pipeline.engine.console import Snapshot, ledger_snapshot
from pipeline.inspect.status import run_status
from pipeline.engine.workdir import WorkDir

# the fast file-stage run of tests/test_ingest.py (no models)
FILES_ONLY = ["speech.hygiene=false", "clips.min_clip_s=1", "normalize.max_height=240", "clips.min_face_px=0", "download.retries=0",
              "clips.mode=fixed", "clips.window_s=1", "shots.enabled=false", "pose.enabled=false", "speech.enabled=false", "curate.enabled=false"]
NOISE = re.compile(r"UserWarning|DeprecationWarning|FutureWarning|feedback manager|^[WIE]0000|core_worker\.cc|^\[20\d\d-|"
                   r"Traceback|INFO |ray\.data", re.MULTILINE)


# The run and its -v twin are real `python -m cnas` processes: what they show on the terminal, the native
# stderr routed at process start and PYTHONWARNINGS read at start-up are the subject. `cnas status` only
# prints what it reads: it runs in process (tests/cli_helpers.py).
def _cnas(args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "CNAS_PROGRESS_EVERY_S": "2", **env}
    return subprocess.run([sys.executable, "-m", "cnas", *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, check=False, cwd=Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory, media_dir):
    d = tmp_path_factory.mktemp("console")
    (d / "s.csv").write_text(f"path,id\n{media_dir / 'zh_a.mp4'},a\n{media_dir / 'en_b.mp4'},b\n{media_dir / 'text.mp4'},bad\n")
    sets = [a for s in FILES_ONLY for a in ("--set", s)]
    # PYTHONWARNINGS=always: Ray Data's DeprecationWarnings (DataContext) are emitted; they must land in the log, not here
    args = ["ingest", "--sources", str(d / "s.csv"), "--num-cpus", "2", *sets]
    p = _cnas([*args, "--out", str(d / "run")], PYTHONWARNINGS="always")
    return d, args, p


def test_terminal_is_quiet_and_shows_progress_and_summary(quiet_run):
    d, _, p = quiet_run
    out = p.stdout
    assert p.returncode == 3, out  # one broken input
    lines = out.splitlines()
    assert len(lines) < 30, out
    assert not NOISE.search(out), out
    assert "SUMMARY ok=2 failed=1" in out and "FAILED at normalize (unreadable" in out
    progress = [l for l in lines if l.startswith("progress: ")]
    assert progress and progress[-1].startswith("progress: 3/3 videos (2 ok, 1 failed, 0 running, 0 queued)"), out
    assert any(l.startswith("stages (done/in progress): download 3/0, normalize 2/0, clips 2/0") for l in lines), out
    assert f"logs (warnings, library and Ray output; -v shows them here): {d / 'run' / 'logs'}" in out

    logs = d / "run" / "logs"
    driver_log = (logs / "cnas.log").read_text()
    native_log = (logs / "native.log").read_text()
    # Ray's own driver output (its core worker's and raylet's stderr) and the library records went there
    assert driver_log.strip() and "Ray worker logs:" in driver_log
    assert (logs / "ray").is_symlink() and (logs / "ray").resolve().is_dir()
    assert native_log is not None
    assert "py.warnings" in driver_log and "DeprecationWarning" in driver_log  # Ray Data's, under PYTHONWARNINGS=always
    beat = json.loads((logs / "progress.json").read_text())
    assert beat["done"] == 2 and beat["failed"] == 1 and beat["queued"] == 0


def test_verbose_shows_more(quiet_run):
    d, args, p = quiet_run
    v = _cnas(["-v", *args, "--out", str(d / "verbose")])
    assert v.returncode == 3, v.stdout
    assert "SUMMARY ok=2 failed=1" in v.stdout
    assert len(v.stdout.splitlines()) > len(p.stdout.splitlines())
    assert "DEBUG " in v.stdout or "INFO " in v.stdout
    assert (d / "verbose" / "logs" / "cnas.log").stat().st_size > 0  # the log file is kept with -v too


def test_status_of_a_finished_run_matches_its_stats(quiet_run):
    d, _, _ = quiet_run
    s = cnas("status", d / "run")
    assert s.returncode == 0, s.output
    stats = json.loads((d / "run" / "stats.json").read_text())
    assert "state: finished" in s.stdout
    assert f"SUMMARY ok={stats['videos_ok']} failed={stats['videos_failed']} clips={stats['clips']} shards={stats['shards']}" in s.stdout


def test_status_of_a_run_in_progress_reads_the_ledger(quiet_run):
    d, _, _ = quiet_run
    run = d / "run"
    # as if the run were going on: no stats.json yet, the ledger as it is
    (run / "stats.json").rename(run / "stats.json.bak")
    try:
        lines = run_status(str(run))
    finally:
        (run / "stats.json.bak").rename(run / "stats.json")
    text = "\n".join(lines)
    assert "state: " in text and "finished at" not in text
    assert "progress: 3/3 videos (2 ok, 1 failed, 0 running, 0 queued)" in text, text


def test_status_of_a_folder_that_is_not_a_run(tmp_path):
    s = cnas("status", tmp_path)
    assert s.returncode == 1
    assert "not a cnas ingest run folder" in s.output and "Traceback" not in s.output


def test_ledger_snapshot_counts_videos_by_stage(tmp_path):
    from pipeline.engine import ledger
    from schemas import FailureRecord

    work = WorkDir(str(tmp_path / "work"))
    stages = ("download", "normalize", "clips")
    ledger.write_ok(work, "v1", "download", {}, 1.0)
    ledger.write_ok(work, "v1", "normalize", {"duration_s": 7200.0}, 1.0)
    ledger.write_ok(work, "v1", "clips", {}, 1.0)
    ledger.write_ok(work, "v2", "download", {}, 1.0)
    ledger.write_failed(work, FailureRecord(video_id="v3", source_uri="x", stage="download", reason="not_found", message="m"), 1.0)
    snap = ledger_snapshot(work, ["v1", "v2", "v3", "v4"], stages)
    snap.elapsed_s = 3600.0
    assert (snap.done, snap.failed, snap.running, snap.queued) == (1, 1, 1, 1)
    assert snap.stage_done == {"download": 2, "normalize": 1, "clips": 1} and snap.stage_at == {"normalize": 1}
    head = snap.lines()[0]
    assert "2/4 videos (1 ok, 1 failed, 1 running, 1 queued); 2.000 source-h in 1:00:00 (2.00 h/h); ETA 1:00:00" in head
    assert Snapshot(total=3).lines()[0].endswith("ETA ?")


def test_live_display_on_a_terminal(tmp_path, monkeypatch):
    import io

    from pipeline.engine import console
    from pipeline.engine import ledger

    term = io.StringIO()
    monkeypatch.setitem(console._state, "terminal", term)
    work = WorkDir(str(tmp_path / "work"))
    ledger.write_ok(work, "v1", "download", {}, 1.0)
    p = console.Progress(2, ["v1", "v2"], ("download", "normalize"), work, str(tmp_path), tty=True).start()
    console.say("[1/2] v2: 3 clips")
    p.video_finished("v2", True, 36.0, ["download", "normalize"])
    snap = p.stop()
    assert "live" not in console._state
    assert (snap.done, snap.running, snap.stage_done, snap.stage_at) == (1, 1, {"download": 2, "normalize": 1}, {"normalize": 1})
    out = term.getvalue()
    assert "[1/2] v2: 3 clips" in out and "\x1b[" in out  # printed above a live (ANSI) display
    assert "progress: 1/2 videos (1 ok, 0 failed, 1 running, 0 queued)" in out
    assert json.loads((tmp_path / "progress.json").read_text())["running"] == 1
