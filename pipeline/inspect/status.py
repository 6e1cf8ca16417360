"""``cnas status``: the state of a run folder, going on in another shell or finished."""

from __future__ import annotations

import json
import os
import time

from pipeline.engine.console import PROGRESS_FILE, hms, ledger_snapshot
from pipeline.engine.dag import DAG
from pipeline.engine.run_folder import RunFolder
from pipeline.engine.runner import summary_lines


def run_status(run_dir: str, now: float | None = None) -> list[str]:
    """The summary of a run folder (raises ValueError for a folder that is not a run)."""
    run = RunFolder(run_dir)
    if not run.is_run():
        raise ValueError(f"{run_dir}: not a cnas ingest run folder (no {RunFolder.SOURCES} / {RunFolder.CONFIG})")
    now = time.time() if now is None else now
    cfg = run.config()
    items = run.sources()
    work = run.work(cfg)
    stages = DAG.active(cfg)
    started = _mtime(run, RunFolder.SOURCES)
    finished = run.dir.exists(RunFolder.STATS) and (_mtime(run, RunFolder.STATS) or 0) >= (started or 0)
    lines = [f"run {run.uri}: {len(items)} videos, stages {', '.join(stages)}"]
    if finished:
        stats = run.stats()
        lines.append(f"state: finished at {stats.finished_at} (wall {hms(stats.wall_s)})")
        lines += summary_lines(stats, run.dir)
        return lines
    snap = ledger_snapshot(work, [i.video_id for i in items], stages)
    snap.elapsed_s = max(0.0, now - started) if started else 0.0
    state = "not started or no video finished a stage yet"
    beat = os.path.join(run.logs_dir(), PROGRESS_FILE) if run.dir.is_local else None
    if beat and os.path.exists(beat):
        try:
            with open(beat, encoding="utf-8") as f:
                age = now - json.load(f)["updated_at"]
            state = (f"running (progress written {age:.0f} s ago)" if age < 120 else
                     f"stopped or stalled (no progress for {hms(age)}; re-run the same command to resume)")
        except (OSError, ValueError, KeyError):
            pass
    lines.append(f"state: {state}")
    lines += snap.lines()
    return lines


def _mtime(run: RunFolder, *parts: str) -> float | None:
    try:
        return run.dir.fs.modified(run.path(*parts)).timestamp()
    except (OSError, AttributeError, ValueError):
        return None
