"""Run the ingestion DAG end to end: sources in, shards + manifest + failures + stats out."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from schemas import ClipRecord, FailureRecord, IdentityResult, ManifestRow, NormalizedMedia, RunStats, StageTiming

from pipeline.engine import console
from pipeline.engine.config import Config, dump_config
from pipeline.engine.dag import DAG
from pipeline.engine.executor import build_plan, clips_of
from pipeline.engine.duplicates import group_duplicates, save_fingerprints
from pipeline.engine.identities import label_clips, save_registry
from pipeline.engine.lock import output_lock
from pipeline.engine.run_folder import RunFolder
from pipeline.engine.sink import write_shards
from pipeline.engine.sources import make_video_id, read_sources
from pipeline.engine.workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    out: str
    stats: RunStats
    manifest: list[ManifestRow]
    failures: list[FailureRecord]

    @property
    def shards_dir(self) -> str:
        return RunFolder(self.out).shards_dir()


def init_ray(cfg: Config) -> str:
    """Connect to ``cfg.ray.address`` or start the embedded local Ray; returns a description."""
    import ray

    if ray.is_initialized():
        return "existing ray session"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The workers' output (MediaPipe, torchaudio and Ray warnings) goes to the Ray session's log
    # files, not this terminal: the terminal shows progress; the summary names the log folder.
    # With -v (console.is_verbose) the workers' output comes to this terminal as well.
    verbose = console.is_verbose()
    quiet = {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose}
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, **quiet)
        where = cfg.ray.address
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **quiet)
        where = "local"
    import ray.data  # noqa: F401  (configures its loggers: a file handler and a console handler)

    for handler in logging.getLogger("ray.data").handlers:  # Ray Data's own log file keeps everything
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if verbose else logging.ERROR)
    return where


def ray_log_dir() -> str | None:
    """The Ray session's log folder on this machine (worker output lands there), if known."""
    try:
        from ray._private.worker import global_worker

        return os.path.join(global_worker.node.get_session_dir_path(), "logs")
    except Exception:  # a client connection or another Ray version: no local session folder
        return None


def preflight(cfg: Config) -> None:
    """Fail before any work when a configured model is missing (a clear error, not N failed videos)."""
    from stages.errors import StageError

    for name in DAG.active(cfg):
        spec = DAG[name]
        if spec.preflight is None:
            continue
        try:
            spec.preflight(DAG.options(cfg, name))
        except StageError as e:
            hint = f" (or disable it: --set {name}.enabled=false)" if spec.optional else ""
            raise ValueError(f"{name} stage: {e.message}{hint}") from None


def run_ingest(
    sources_path: str,
    out: str,
    cfg: Config,
    echo: Callable[[str], None] | None = None,
) -> IngestResult:
    """Run the DAG over the sources in ``sources_path`` and write everything under ``out``.

    Re-running with the same arguments resumes: stages recorded in the ledger are skipped, and
    the shards are rebuilt only if the set of clips changed. A local ``out`` (and a local work
    dir elsewhere) is locked for the run: a second run into it stops with ``OutputLocked``.
    """
    with contextlib.ExitStack() as locks:
        for folder in {out, cfg.work_dir or out}:
            if WorkDir(folder).is_local:
                locks.enter_context(output_lock(WorkDir(folder).root, "cnas ingest"))
        return _run_ingest(sources_path, out, cfg, echo)


def _run_ingest(sources_path: str, out: str, cfg: Config, echo: Callable[[str], None] | None) -> IngestResult:
    say = echo or console.say
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    out_dir = WorkDir(out)
    run = RunFolder(out_dir)
    work_uri = run.work_uri(cfg)
    work = WorkDir(work_uri)
    source_failures: list[FailureRecord] = []
    sources = read_sources(sources_path, on_error=lambda uri, msg: source_failures.append(
        FailureRecord(video_id=make_video_id(uri), source_uri=uri, stage="sources", reason="playlist_expansion_failed", message=msg)))
    if not sources and not source_failures:
        raise ValueError(f"{sources_path}: no sources")
    preflight(cfg)
    run.write_inputs(dump_config(cfg), sources)
    where = init_ray(cfg)
    say(f"cnas ingest: {len(sources)} videos, ray={where}, work dir {work.uri}")
    console.link_ray_logs(ray_log_dir())
    if console.logs_dir():
        say(f"logs (warnings, library and Ray output; -v shows them here): {console.logs_dir()}")
    elif ray_log_dir():
        say(f"worker logs: {ray_log_dir()}")

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = console.is_verbose() and sys.stderr.isatty()  # otherwise console.Progress shows it
    # One block per video: a worker that dies (out of memory, a segfault in a native library)
    # loses that video's block, not the run. Missing videos are reported as failures below.
    ctx.max_errored_blocks = len(sources)
    # Reservation splits the CPUs between the operators up front; with one video per block and
    # few CPUs that left a third of them idle (docs/BENCHMARKS.md, cluster scaling).
    ctx.op_resource_reservation_enabled = cfg.ray.reserve_op_resources
    ds = build_plan(sources, cfg, work.uri)
    clips: list[ClipRecord] = []
    failures: list[FailureRecord] = []
    stage_seconds: dict[str, float] = defaultdict(float)
    stage_videos: Counter = Counter()
    source_s = 0.0
    resumed = 0
    seen_ok: set[str] = set()
    reject_counts: Counter = Counter()
    reject_seconds: dict[str, float] = defaultdict(float)
    identity_results: dict[str, IdentityResult] = {}
    stages = DAG.active(cfg)
    progress = console.Progress(len(sources), [s.video_id for s in sources], stages, work, console.logs_dir()).start() \
        if echo is None else None
    per_video = len(sources) <= console.PER_VIDEO_LINES_MAX  # a long run shows its failures and the progress only
    try:
        for done, row in enumerate(ds.iter_rows(), 1):
            row_s = NormalizedMedia.model_validate_json(row["normalize"]).duration_s if row["normalize"] else 0.0
            if progress is not None:
                progress.video_finished(row["video_id"], not row["failure"], row_s, [s for s in stages if row.get(s)])
            for stage, seconds in json.loads(row["timings"]).items():
                stage_seconds[stage] += seconds
                stage_videos[stage] += 1
            source_s += row_s
            if row["failure"]:
                f = FailureRecord.model_validate_json(row["failure"])
                failures.append(f)
                say(f"[{done}/{len(sources)}] {f.video_id}: FAILED at {f.stage} ({f.reason}: {f.message})")
                continue
            seen_ok.add(row["video_id"])
            if row.get("identity"):
                identity_results[row["video_id"]] = IdentityResult.model_validate_json(row["identity"])
            got, rejects, rejected_s = clips_of(row)
            clips.extend(got)
            reject_counts.update(rejects)
            for k, v in rejected_s.items():
                reject_seconds[k] += v
            was_resumed = "clips" in json.loads(row["resumed"])
            resumed += was_resumed
            why = "" if got or not rejected_s else " (rejected: " + ", ".join(f"{r} {sec:.1f} s" for r, sec in sorted(rejected_s.items(), key=lambda kv: -kv[1])[:3]) + ")"
            if per_video:
                say(f"[{done}/{len(sources)}] {row['video_id']}: {len(got)} clips{why}" + (" (from ledger)" if was_resumed else ""))
    finally:
        if progress is not None:
            progress.stop()

    returned = {c.video_id for c in clips} | {f.video_id for f in failures} | seen_ok
    for item in sources:
        if item.video_id not in returned:
            failures.append(FailureRecord(video_id=item.video_id, source_uri=item.uri, stage="worker", reason="worker_crashed",
                                          message="the Ray worker processing this video died; see the Ray logs (re-run to retry)"))
            say(f"{item.video_id}: FAILED (worker crashed)")
    failures.extend(source_failures)
    fingerprints = None
    if "curate" in DAG.active(cfg) and cfg.curate.fingerprint:  # rebroadcast copies across videos and runs
        clips, copies, fingerprints = group_duplicates(clips, out_dir, cfg.curate)
        for c in copies:
            reject_counts["duplicate"] += 1
            reject_seconds["duplicate"] += c.end_s - c.start_s
        if copies:
            say(f"rebroadcast copies dropped: {len(copies)} clips ({sum(c.end_s - c.start_s for c in copies):.1f} s)")
    registry = label_clips(clips, identity_results, out_dir, cfg.identity) if "identity" in DAG.active(cfg) else None
    say(f"writing shards for {len(clips)} clips ...")
    t_sink = time.perf_counter()
    s = cfg.shards
    manifest, rewritten = write_shards(clips, work, out_dir, s.max_count, s.max_size_mb, s.prefix)
    if fingerprints is not None:
        save_fingerprints(fingerprints, out_dir)
    if registry is not None:
        save_registry(registry, out_dir)
        say(f"identities: {len({c.identity for c in clips if c.identity})} in this run's clips, {len(registry.identities)} in {run.path(RunFolder.IDENTITIES)}")
    stage_seconds["shards"] += time.perf_counter() - t_sink
    stage_videos["shards"] += len({c.video_id for c in clips}) if rewritten else 0
    failures.sort(key=lambda f: f.video_id)
    run.write_failures(failures)

    stats = RunStats(
        videos_in=len(sources) + len(source_failures),
        videos_ok=len(sources) + len(source_failures) - len(failures),
        videos_failed=len(failures),
        videos_resumed=resumed,
        source_hours=source_s / 3600,
        clip_hours=sum(c.end_s - c.start_s for c in clips) / 3600,
        clips=len(manifest),
        shards=len({r.shard for r in manifest}),
        failures_by_reason=dict(sorted(Counter(f"{f.stage}/{f.reason}" for f in failures).items())),
        rejects_by_reason=dict(sorted(reject_counts.items())),
        rejected_seconds_by_reason={k: round(v, 3) for k, v in sorted(reject_seconds.items())},
        stage_timings={k: StageTiming(videos=stage_videos[k], seconds=round(v, 3)) for k, v in stage_seconds.items()},
        wall_s=round(time.perf_counter() - t0, 3),
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ray_address=where,
        skipped_stages=skipped_stages(cfg),
        config=cfg.model_dump(mode="json"),
    )
    run.write_stats(stats)
    for line in summary_lines(stats, out_dir):
        say(line)
    return IngestResult(out=out_dir.uri, stats=stats, manifest=manifest, failures=failures)


def skipped_stages(cfg: Config) -> dict[str, str]:
    """Stages this config does not run, by name, with the reason."""
    return dict(sorted(DAG.skip_reasons(cfg).items()))


def summary_lines(stats: RunStats, out: WorkDir) -> list[str]:
    """The end-of-run summary ``cnas ingest`` prints and ``cnas status`` repeats."""
    run = RunFolder(out)
    lines = [
        f"videos: {stats.videos_in} in, {stats.videos_ok} ok, {stats.videos_failed} failed"
        f" ({stats.videos_resumed} resumed from the ledger)",
        f"hours: {stats.source_hours:.4f} normalised in, {stats.clip_hours:.4f} in clips; {stats.clips} clips in {stats.shards} shards",
    ]
    if stats.failures_by_reason:
        lines.append("failures: " + ", ".join(f"{k} x{v}" for k, v in stats.failures_by_reason.items()))
    if stats.rejects_by_reason:
        lines.append("clip rejects: " + ", ".join(
            f"{k} x{v} ({stats.rejected_seconds_by_reason.get(k, 0):.1f}s)" for k, v in stats.rejects_by_reason.items()))
    if stats.skipped_stages:
        lines.append("skipped stages: " + "; ".join(f"{k}: {v}" for k, v in stats.skipped_stages.items()))
    per_stage = ", ".join(f"{k} {v.seconds:.1f}s/{v.videos}" for k, v in stats.stage_timings.items())
    lines.append(f"time per stage (seconds/videos): {per_stage}; wall {stats.wall_s:.1f}s")
    lines.append(f"shards: {run.shards_dir()}  manifest: {run.path(RunFolder.MANIFEST)}  failures: {run.path(RunFolder.FAILURES)}")
    lines.append(f"SUMMARY ok={stats.videos_ok} failed={stats.videos_failed} clips={stats.clips} shards={stats.shards}")
    return lines
