"""What a run shows on the terminal: its own lines and a progress display; the rest goes to ``OUT/logs/``.

Without ``-v`` the driver's third-party output is routed away from the terminal:

* Python ``warnings`` and every library logger go to ``OUT/logs/cnas.log`` (the project's own
  warnings are shown as well);
* the process's native stderr (file descriptor 2: Ray's core worker, TFLite / MediaPipe glog,
  tqdm bars of model downloads, the Ray processes this driver starts) goes to ``OUT/logs/native.log``;
* the Ray workers' output stays in the Ray session's log folder (``ray.init(log_to_driver=False)``),
  linked as ``OUT/logs/ray``.

With ``-v`` everything goes to the terminal as well. The progress display is a live panel on a
terminal and a plain line at most every ``CNAS_PROGRESS_EVERY_S`` seconds (default 30) otherwise.
``cnas status RUN`` prints the same summary from the run folder (ledger, sources, stats).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from stages.files import write_bytes

DRIVER_LOG = "cnas.log"
NATIVE_LOG = "native.log"
PROGRESS_FILE = "progress.json"
#: Loggers whose warnings are the project's own: shown on the terminal even without ``-v``.
OWN_LOGGERS = ("pipeline", "stages", "trainers", "cnas", "geometry")
#: Above this many videos the per-video "ok" lines are left out (failures are always shown).
PER_VIDEO_LINES_MAX = 200

_state = {"verbose": False, "terminal": None, "console_handler": None, "logs": None}


def is_verbose() -> bool:
    return bool(_state["verbose"])


def terminal() -> TextIO:
    """The stream that reaches the user's terminal (stderr before any routing)."""
    return _state["terminal"] or sys.stderr


def logs_dir() -> str | None:
    """The folder the routed output goes to, once ``route_to_logs`` ran."""
    return _state["logs"]


class _OwnRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and record.name.split(".")[0] in OWN_LOGGERS


def setup_logging(verbose: bool) -> None:
    """Logging of the ``cnas`` process: everything to stderr (DEBUG with ``verbose``, else INFO) until
    ``route_to_logs`` (ingest, demo) sends third-party records to the run's log file instead."""
    _state["verbose"] = verbose
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    _state["console_handler"] = handler


def route_to_logs(folder: str) -> str | None:
    """Send the library logs, warnings and native stderr of this process to ``folder`` (a local path;
    ``None`` for a remote run folder: nothing is routed then). Returns the folder."""
    if "://" in folder and not folder.startswith("file://"):
        return None
    folder = os.path.abspath(folder.removeprefix("file://"))
    os.makedirs(folder, exist_ok=True)
    logging.captureWarnings(True)  # Python warnings become records of the py.warnings logger: to the file
    root = logging.getLogger()
    fh = logging.FileHandler(os.path.join(folder, DRIVER_LOG), encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh.setLevel(logging.DEBUG if is_verbose() else logging.INFO)
    root.addHandler(fh)
    _state["logs"] = folder
    if not is_verbose() and _state["terminal"] is None:
        sys.stdout.flush()
        sys.stderr.flush()
        term = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0), encoding="utf-8", errors="replace",
                                write_through=True)
        native = os.open(os.path.join(folder, NATIVE_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(native, 2)
        os.close(native)
        _state["terminal"] = term
        handler = _state["console_handler"]
        if handler is not None:
            handler.setStream(term)
            handler.addFilter(_OwnRecords())
    return folder


def link_ray_logs(ray_logs: str | None) -> None:
    """Link the Ray session's log folder (the workers' output) as ``logs/ray``."""
    folder = logs_dir()
    if not folder or not ray_logs:
        return
    link = os.path.join(folder, "ray")
    try:
        if os.path.islink(link):
            os.remove(link)
        if not os.path.exists(link):
            os.symlink(ray_logs, link)
    except OSError:
        pass
    logging.getLogger(__name__).info("Ray worker logs: %s", ray_logs)


def say(msg: str) -> None:
    """A line for the user: on the terminal (above the live display when one runs)."""
    live = _state.get("live")
    if live is not None:
        live.console.print(msg, markup=False, highlight=False, soft_wrap=True)
    else:
        print(msg, file=terminal(), flush=True)


# ---------------------------------------------------------------- progress


@dataclass
class Snapshot:
    """Where a run stands: videos by state, per-stage counts, source hours, rate and ETA."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    source_s: float = 0.0
    elapsed_s: float = 0.0
    stages: tuple[str, ...] = ()
    stage_done: dict[str, int] = field(default_factory=dict)
    stage_at: dict[str, int] = field(default_factory=dict)  # started videos whose next stage is this one

    @property
    def queued(self) -> int:
        return max(0, self.total - self.done - self.failed - self.running)

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def eta_s(self) -> float | None:
        if not self.finished or not self.elapsed_s:
            return None
        return self.elapsed_s / self.finished * (self.total - self.finished)

    def lines(self) -> list[str]:
        rate = self.source_s / self.elapsed_s if self.elapsed_s else 0.0  # source-hours per wall-hour
        eta = self.eta_s()
        head = (f"progress: {self.finished}/{self.total} videos ({self.done} ok, {self.failed} failed, {self.running} running,"
                f" {self.queued} queued); {self.source_s / 3600:.3f} source-h in {hms(self.elapsed_s)}"
                f" ({rate:.2f} h/h); ETA {hms(eta) if eta is not None else '?'}")
        out = [head]
        if self.stages:
            out.append("stages (done/in progress): " + ", ".join(
                f"{s} {self.stage_done.get(s, 0)}/{self.stage_at.get(s, 0)}" for s in self.stages))
        return out

    def line(self) -> str:
        """One line for a log: the counts, and where the videos in progress are."""
        at = ", ".join(f"{s} {self.stage_at[s]}" for s in self.stages if self.stage_at.get(s))
        return self.lines()[0] + (f"; in progress at: {at}" if at else "")

    def to_json(self) -> dict:
        return {"total": self.total, "done": self.done, "failed": self.failed, "running": self.running, "queued": self.queued,
                "source_s": round(self.source_s, 3), "elapsed_s": round(self.elapsed_s, 3), "stage_done": self.stage_done,
                "stage_at": self.stage_at}


def hms(s: float | None) -> str:
    s = int(s or 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def ledger_snapshot(work, video_ids: Iterable[str], stages: tuple[str, ...], skip: set[str] = frozenset(),
                    snap: Snapshot | None = None) -> Snapshot:
    """Count the videos of ``video_ids`` by their ledger entries (``<work>/ledger/<video>/<stage>.json``).

    A video is done when every stage of ``stages`` is ok, failed when one entry failed, running when
    it has some entries, queued otherwise. ``skip`` are videos already counted in ``snap``."""
    from pipeline.engine import ledger

    ids = list(video_ids)
    snap = snap or Snapshot(total=len(ids), stages=stages)
    snap.stages = stages
    for vid in ids:
        if vid in skip:
            continue
        try:
            present = {n[:-5] for n in work.listdir(ledger.LEDGER_DIR, vid) if n.endswith(".json")}
        except (OSError, ValueError):
            continue
        if not present:
            continue
        ok: set[str] = set()
        failed = False
        for stage in stages:
            if stage not in present:
                continue
            entry = ledger.read_entry(work, vid, stage)
            if entry is None:
                continue
            if entry.status == "failed":
                failed = True
                break
            ok.add(stage)
            if stage == "normalize" and isinstance(entry.output, dict):
                dur = entry.output.get("duration_s")
                snap.source_s += float(dur) if isinstance(dur, (int, float)) else 0.0
        for stage in ok:
            snap.stage_done[stage] = snap.stage_done.get(stage, 0) + 1
        if failed:
            snap.failed += 1
        elif all(s in ok for s in stages):
            snap.done += 1
        else:
            snap.running += 1
            nxt = next(s for s in stages if s not in ok)
            snap.stage_at[nxt] = snap.stage_at.get(nxt, 0) + 1
    return snap


class Progress:
    """The driver's progress display: counts from the rows the DAG returned, the videos in flight
    from the ledger. A live panel on a terminal; plain lines every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, video_ids: list[str], stages: tuple[str, ...], work, out_logs: str | None,
                 every_s: float | None = None, tty: bool | None = None):
        self.total, self.video_ids, self.stages, self.work = total, video_ids, stages, work
        self.out_logs = out_logs
        self.t0 = time.time()
        self.done = self.failed = 0
        self.source_s = 0.0
        self.stage_done: dict[str, int] = {}
        self.returned: set[str] = set()
        self.every_s = every_s if every_s is not None else float(os.environ.get("CNAS_PROGRESS_EVERY_S", "30"))
        self.tty = terminal().isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        self._cached: Snapshot | None = None
        self._cached_at = 0.0

    # called by the runner for every row the DAG returns
    def video_finished(self, video_id: str, ok: bool, source_s: float, stages_ok: Iterable[str] = ()) -> None:
        with self._lock:
            self.returned.add(video_id)
            self.done += ok
            self.failed += not ok
            self.source_s += source_s
            for s in stages_ok:
                self.stage_done[s] = self.stage_done.get(s, 0) + 1

    def snapshot(self, max_age_s: float = 2.0) -> Snapshot:
        now = time.time()
        if self._cached is not None and now - self._cached_at < max_age_s:
            return self._cached
        with self._lock:
            snap = Snapshot(total=self.total, done=self.done, failed=self.failed, source_s=self.source_s,
                            stage_done=dict(self.stage_done), stages=self.stages)
            returned = set(self.returned)
        snap = ledger_snapshot(self.work, self.video_ids, self.stages, skip=returned, snap=snap)
        # in flight per the ledger but not returned yet: count as running, not as finished
        snap.running += snap.done + snap.failed - self.done - self.failed
        snap.done, snap.failed = self.done, self.failed
        snap.source_s = self.source_s + 0.0
        snap.elapsed_s = now - self.t0
        self._cached, self._cached_at = snap, now
        self._write(snap)
        return snap

    def _write(self, snap: Snapshot) -> None:
        if not self.out_logs:
            return
        try:
            beat = {**snap.to_json(), "pid": os.getpid(), "updated_at": time.time()}
            write_bytes(os.path.join(self.out_logs, PROGRESS_FILE), json.dumps(beat).encode("utf-8"))
        except OSError:
            pass

    def start(self) -> Progress:
        if self.tty:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            console = Console(file=terminal(), force_terminal=True)
            self._live = Live(get_renderable=lambda: Text("\n".join(self.snapshot().lines())), console=console,
                              refresh_per_second=1, transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
            _state["live"] = self._live
        else:
            self._thread = threading.Thread(target=self._plain, daemon=True, name="cnas-progress")
            self._thread.start()
        return self

    def _plain(self) -> None:
        last = None
        while not self._stop.wait(self.every_s):
            snap = self.snapshot(max_age_s=0)
            key = (snap.done, snap.failed, snap.running, snap.stage_done)
            if key != last:  # a log stays short: a line when something moved
                say(snap.line())
                last = key

    def stop(self) -> Snapshot:
        self._stop.set()
        snap = self.snapshot(max_age_s=0)
        if self._live is not None:
            self._live.stop()
            _state.pop("live", None)
        else:
            if self._thread is not None:
                self._thread.join(timeout=5)
            for line in snap.lines():
                say(line)
        return snap
