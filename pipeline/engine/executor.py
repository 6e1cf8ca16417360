"""Runs a stage ``Registry`` on Ray Data, one row per video.

Every stage becomes one operator, chosen from its declaration: a ``map`` task for a file stage, a
``map_batches`` over an actor pool for a stage with ``setup`` (its models load once per actor,
lazily, on the first video that needs them). Rows carry small JSON records and paths, never media
bytes. ``StageTask`` wraps every stage the same way:

* skips the stage when the resume ledger holds its output under the same fingerprint (and that
  output's files still exist),
* turns a ``StageError`` (or any unexpected exception) into a failure record so the run goes on,
* records the time the stage took.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import traceback
import warnings
from typing import Any

from schemas import ClipRecord, ClipSet, FailureRecord, SourceItem
from stages.errors import StageError

from pipeline.engine import ledger
from pipeline.engine.config import Config
from pipeline.engine.dag import DAG
from pipeline.engine.registry import Registry, Resources, StageContext
from pipeline.engine.workdir import WorkDir

log = logging.getLogger(__name__)

def initial_row(item: SourceItem, registry: Registry = DAG) -> dict[str, Any]:
    """The row that enters the DAG for one source: one (JSON) column per stage. Every value is a string."""
    row = {"video_id": item.video_id, "source": item.to_json()}
    row.update({name: "" for name in registry.names})
    row.update(failure="", timings="{}", resumed="[]")
    return row


class StageTask:
    """Ray Data ``map`` callable for one stage. Picklable: holds the registry, the config and the work-dir URI."""

    def __init__(self, stage: str, cfg: Config, work_uri: str, registry: Registry = DAG):
        self.stage = stage
        self.spec = registry[stage]
        self.registry = registry
        self.cfg = cfg
        self.work_uri = work_uri
        self._models: Any = None

    def models(self) -> Any:
        # Loaded on the first video that needs them: a resumed run whose videos are all in the
        # ledger never pays for model loading.
        if self._models is None and self.spec.setup is not None:
            self._models = self.spec.setup(self.registry.options(self.cfg, self.stage))
        return self._models

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["failure"]:
            return row
        item = SourceItem.model_validate_json(row["source"])
        try:
            return self._run(row, item)
        except Exception as e:  # ledger or storage trouble: record it for this video, keep the run going
            return self._fail(row, FailureRecord(video_id=item.video_id, source_uri=item.uri, stage=self.stage,
                                                 reason="internal_error", message=_last_line(e)), None)

    def _context(self, row: dict[str, Any], item: SourceItem, work: WorkDir) -> StageContext:
        inputs = {d: self.registry[d].output.model_validate_json(row[d]) for d in self.spec.deps if row.get(d)}
        return StageContext(item=item, options=self.registry.options(self.cfg, self.stage), inputs=inputs, work=work,
                            skipped=self.registry.skip_reasons(self.cfg),
                            input_options={d: self.registry.options(self.cfg, d) for d in inputs})

    def _run(self, row: dict[str, Any], item: SourceItem) -> dict[str, Any]:
        work = WorkDir(self.work_uri)
        ctx = self._context(row, item, work)
        entry = ledger.read_entry(work, item.video_id, self.stage)
        fingerprint = self.registry.fingerprint(self.cfg, self.stage, item)
        if entry is not None and entry.fingerprint == fingerprint:
            if entry.status == "ok" and self._still_there(entry.output, ctx):
                row[self.stage] = json.dumps(entry.output)
                row["resumed"] = json.dumps(json.loads(row["resumed"]) + [self.stage])
                return row
            if entry.status == "failed" and not self.cfg.retry_failed:
                row["failure"] = entry.failure.model_dump_json()
                return row
        # This stage is about to (re)write its files: its own entry and its dependents' go first,
        # so a crash from here on can never leave an entry describing overwritten outputs.
        ledger.forget(work, item.video_id, [self.stage, *self.registry.dependents(self.stage)])
        t0 = time.perf_counter()
        try:
            ctx.models = self.models()
            output = self.spec.run(ctx)
            if not isinstance(output, self.spec.output):
                raise TypeError(f"stage {self.stage} returned {type(output).__name__}, declared {self.spec.output.__name__}")
            if self.spec.emits_clips:
                self.registry.mark_clips(output.clips, set(ctx.inputs) | {self.stage}, ctx.skipped)
        except StageError as e:
            failure = FailureRecord(video_id=item.video_id, source_uri=item.uri, stage=self.stage, reason=e.reason, message=e.message)
        except Exception as e:  # a bug or an environment problem: record it, keep the run going
            failure = FailureRecord(video_id=item.video_id, source_uri=item.uri, stage=self.stage, reason="internal_error",
                                    message=_last_line(e))
        else:
            seconds = time.perf_counter() - t0
            dumped = output.model_dump(mode="json")
            ledger.write_ok(work, item.video_id, self.stage, dumped, seconds, fingerprint)
            row[self.stage] = json.dumps(dumped)
            return self._timed(row, seconds)
        seconds = time.perf_counter() - t0
        ledger.write_failed(work, failure, seconds, fingerprint)
        return self._fail(row, failure, seconds)

    def _still_there(self, output: Any, ctx: StageContext) -> bool:
        """A ledger entry only counts while it parses as the declared record and its files are still there."""
        try:
            record = self.spec.output.model_validate(output)
        except ValueError:
            return False
        return self.spec.outputs_exist is None or self.spec.outputs_exist(record, ctx)

    def _timed(self, row: dict[str, Any], seconds: float) -> dict[str, Any]:
        timings = json.loads(row["timings"])
        timings[self.stage] = seconds
        row["timings"] = json.dumps(timings)
        return row

    def _fail(self, row: dict[str, Any], failure: FailureRecord, seconds: float | None) -> dict[str, Any]:
        if seconds is not None:
            self._timed(row, seconds)
        row["failure"] = failure.model_dump_json()
        return row


def _last_line(e: BaseException) -> str:
    return traceback.format_exception_only(type(e), e)[-1].strip()[:500]


class ModelStageActor:
    """``map_batches`` actor for a model stage: one ``StageTask`` (and so one set of models) per actor."""

    def __init__(self, stage: str, cfg: Config, work_uri: str, registry: Registry = DAG):
        self.task = StageTask(stage, cfg, work_uri, registry)

    def __call__(self, batch):
        import pandas as pd

        return pd.DataFrame([self.task(row) for row in batch.to_dict("records")])


def actor_class(stage: str) -> type[ModelStageActor]:
    """``ModelStageActor`` under the stage's name (``SpeechActor``): Ray's operator names, progress
    bars and process titles (``ray::MapWorker(MapBatches(SpeechActor))``) then say which stage a
    worker runs."""
    name = "".join(part.title() for part in stage.split("_")) + "Actor"
    return type(name, (ModelStageActor,), {"__module__": __name__, "__qualname__": name})


def stage_resources(cfg: Config, registry: Registry, stage: str) -> Resources:
    """The declared resources of ``stage`` with the config's ``ray.resources.<stage>`` on top; a model
    stage whose options say ``device: cuda`` gets one GPU per actor unless told otherwise."""
    res = cfg.ray.resources.get(stage, registry[stage].resources)
    opts = registry.options(cfg, stage)
    if registry[stage].is_model_stage and res.gpus == 0 and getattr(opts, "device", None) == "cuda":
        res = res.model_copy(update={"gpus": 1.0})
    return res


def fit_cpus(actor_cpus: dict[str, float], actor_counts: dict[str, int], task_cpus: dict[str, float],
             node_cpus: list[float]) -> float | None:
    """The CPUs per actor and per file task when the declared ones cannot all be placed, else None.

    Each actor holds its CPUs for the whole run; on a small cluster the file stages would then never
    be scheduled. Two conditions: the actors plus one file task fit in the cluster, and on some node
    a file task fits beside the actors there. Ray may put the actors anywhere, but some node holds
    at most ``ceil(actors / nodes)`` of them (pigeonhole), so that node's free CPUs are what must
    fit a task: 2 nodes of 1 CPU with two 0.67-CPU actors leave 0.33 on each, and a 0.67 task waits
    forever."""
    nodes = [c for c in node_cpus if c > 0]
    if not nodes or not actor_cpus:
        return None
    n = sum(actor_counts.get(s, 1) for s in actor_cpus)
    per_node = -(-n // len(nodes))
    biggest_actor, biggest_task = max(actor_cpus.values()), max(task_cpus.values(), default=0.0)
    total_ok = sum(actor_cpus[s] * actor_counts.get(s, 1) for s in actor_cpus) + biggest_task <= sum(nodes)
    node_ok = min(nodes) >= per_node * biggest_actor + biggest_task
    if total_ok and node_ok:
        return None
    return min(sum(nodes) / (n + 1), min(nodes) / (per_node + 1))


def build_plan(sources: list[SourceItem], cfg: Config, work_uri: str, registry: Registry = DAG):
    """The Ray Data dataset of the whole DAG; iterate it to run. One block per video up to ``max_blocks``."""
    import ray.data

    rows = [initial_row(s, registry) for s in sources]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), cfg.ray.max_blocks)))
    stages = registry.active(cfg)
    res = {s: stage_resources(cfg, registry, s) for s in stages}
    actor_cpus = {s: r.cpus for s, r in res.items() if registry[s].is_model_stage}
    task_cpus = {s: r.cpus for s, r in res.items() if not registry[s].is_model_stage}
    nodes = [c for n in ray.nodes() if n.get("Alive") and (c := float(n["Resources"].get("CPU", 0.0))) > 0]
    # actors per node: a second node adds model capacity, not only file-task slots
    pool = {s: res[s].actors * max(1, len(nodes)) for s in actor_cpus}
    share = fit_cpus(actor_cpus, pool, task_cpus, nodes)
    if share is not None:
        actor_cpus = {k: min(v, share) for k, v in actor_cpus.items()}
        task_cpus = {k: min(v, share) for k, v in task_cpus.items()}
        log.warning("only %.1f CPUs on %d node(s): model actors get %s, file stages at most %.2f each", sum(nodes), len(nodes),
                    {k: round(v, 2) for k, v in actor_cpus.items()}, share)
    for stage in stages:
        if registry[stage].is_model_stage:
            r = res[stage]
            # The whole pool from the start (an actor loads its models only when a video reaches it),
            # and at most two videos in flight per actor (one running, one queued): queued deeper
            # behind a busy actor on one node, a video would wait while another node's actor idles.
            ds = ds.map_batches(
                actor_class(stage), fn_constructor_args=(stage, cfg, work_uri, registry), batch_size=r.batch_size,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(min_size=pool[stage], max_size=pool[stage], max_tasks_in_flight_per_actor=2),
                num_cpus=actor_cpus[stage], num_gpus=r.gpus,
            )
        else:
            # ray_remote_args_fn keeps Ray Data from fusing this stage into the next operator;
            # fused into a model actor, normalize would run one video at a time inside it.
            with warnings.catch_warnings():  # deprecated in Ray 2.60, but the only way to keep it unfused today
                warnings.simplefilter("ignore", DeprecationWarning)
                ds = ds.map(StageTask(stage, cfg, work_uri, registry), ray_remote_args_fn=functools.partial(_cpus, task_cpus[stage]))
    return ds


def _cpus(n: float) -> dict[str, float]:
    return {"num_cpus": n}


def clips_of(row: dict[str, Any], registry: Registry = DAG) -> tuple[list[ClipRecord], dict[str, int], dict[str, float]]:
    """Clips of a finished row, and the clip-level rejects (count and seconds by reason): from the
    last stage that emits the clip set and ran (FLAME re-emits the clips with flame.npz added)."""
    for spec in reversed(list(registry)):
        if spec.emits_clips and row.get(spec.name):
            out = ClipSet.model_validate_json(row[spec.name])
            return out.clips, out.rejects, out.rejected_s
    return [], {}, {}
