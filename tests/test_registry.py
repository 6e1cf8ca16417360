"""The stage registry: a stage added by a declaration alone runs, resumes and invalidates; every
option that changes a stage's output invalidates exactly that stage and its dependants."""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from pipeline.engine.config import Config, load_config
from pipeline.engine.dag import DAG
from pipeline.engine.registry import Registry, StageContext, StageSpec
from schemas import Record, SourceItem
from schemas.settings import Settings, output_fields, runtime_field

# ---------------------------------------------------------------------------------------------
# a toy stage, declared in this file only


class ToyOptions(Settings):
    greeting: str = Field("hello", description="written into the toy file: changes the output")
    repeat_threads: int = runtime_field(1, ge=1, description="how it runs, not what it writes")


class ToyResult(Record):
    path: str
    text: str


def run_toy(ctx: StageContext) -> ToyResult:
    size = ctx.inputs["download"].size_bytes
    text = f"{ctx.options.greeting} {ctx.item.video_id} {size}"
    runs = int(ctx.work.read_text("toy", f"{ctx.item.video_id}.runs")) if ctx.work.exists("toy", f"{ctx.item.video_id}.runs") else 0
    ctx.work.write_text(str(runs + 1), "toy", f"{ctx.item.video_id}.runs")
    ctx.work.write_text(text, "toy", f"{ctx.item.video_id}.txt")
    return ToyResult(path=ctx.work.path("toy", f"{ctx.item.video_id}.txt"), text=text)


def toy_exists(out: ToyResult, ctx: StageContext) -> bool:
    return os.path.exists(out.path)


TOY = StageSpec("toy", ToyOptions, ToyResult, run_toy, requires={"download": "the source file"}, outputs_exist=toy_exists)


class ToyConfig(Config):
    toy: ToyOptions = Field(default_factory=ToyOptions)


def _run(registry: Registry, cfg: Config, sources: list[SourceItem], work: Path) -> list[dict]:
    import sys

    from ray import cloudpickle

    from pipeline.engine.executor import build_plan

    # Ray workers cannot import a test module; ship this one's toy stage by value. (A real stage
    # lives in an installed package, which every node imports.)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    return list(build_plan(sources, cfg, str(work), registry).iter_rows())


def test_a_stage_declared_alone_runs_resumes_and_invalidates(tmp_path, media_dir, ray_session):
    registry = Registry([DAG["download"], TOY])
    sources = [SourceItem(video_id="zh_a", uri=str(media_dir / "zh_a.mp4"), kind="file")]
    work = tmp_path / "work"
    runs = lambda: int((work / "toy" / "zh_a.runs").read_text())  # noqa: E731

    [row] = _run(registry, ToyConfig(), sources, work)
    assert not row["failure"], row["failure"]
    out = ToyResult.model_validate_json(row["toy"])
    assert out.text == f"hello zh_a {os.path.getsize(media_dir / 'zh_a.mp4')}" and runs() == 1
    assert json.loads((work / "ledger" / "zh_a" / "toy.json").read_text())["status"] == "ok"

    [row] = _run(registry, ToyConfig(), sources, work)  # same options: everything from the ledger
    assert json.loads(row["resumed"]) == ["download", "toy"] and runs() == 1

    [row] = _run(registry, ToyConfig(toy=ToyOptions(repeat_threads=4)), sources, work)  # a runtime setting
    assert json.loads(row["resumed"]) == ["download", "toy"] and runs() == 1

    [row] = _run(registry, ToyConfig(toy=ToyOptions(greeting="ni hao")), sources, work)  # an output setting
    assert json.loads(row["resumed"]) == ["download"] and runs() == 2
    assert ToyResult.model_validate_json(row["toy"]).text.startswith("ni hao zh_a")

    (work / "toy" / "zh_a.txt").unlink()  # its output is gone: the entry no longer counts
    [row] = _run(registry, ToyConfig(toy=ToyOptions(greeting="ni hao")), sources, work)
    assert json.loads(row["resumed"]) == ["download"] and runs() == 3


def test_a_failing_stage_is_recorded_with_its_stage_and_reason(tmp_path, media_dir, ray_session):
    from stages.errors import StageError

    def broken(ctx: StageContext) -> ToyResult:
        raise StageError("toy_broken", "this toy always fails")

    registry = Registry([DAG["download"], StageSpec("toy", ToyOptions, ToyResult, broken, requires={"download": "x"})])
    sources = [SourceItem(video_id="zh_a", uri=str(media_dir / "zh_a.mp4"), kind="file")]
    [row] = _run(registry, ToyConfig(), sources, tmp_path / "work")
    failure = json.loads(row["failure"])
    assert (failure["stage"], failure["reason"], failure["message"]) == ("toy", "toy_broken", "this toy always fails")


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="not declared before it"):
        Registry([TOY])
    with pytest.raises(ValueError, match="declared twice"):
        Registry([DAG["download"], DAG["download"]])
    with pytest.raises(TypeError, match="no section 'toy'"):
        Registry([DAG["download"], TOY]).options(Config(), "toy")


def test_every_stage_has_its_options_as_config_section_and_a_record_output():
    cfg = Config()
    for spec in DAG:
        assert isinstance(DAG.options(cfg, spec.name), spec.options)
        assert issubclass(spec.output, Record), spec.name
        assert spec.name in cfg.ray.resources


def test_skip_reasons_follow_the_declarations(tmp_path):
    cfg = load_config(None, ["pose.enabled=false", "speech.enabled=false"])
    reasons = DAG.skip_reasons(cfg)
    assert reasons == {"pose": "disabled in config (pose.enabled=false)", "speech": "disabled in config (speech.enabled=false)",
                       "identity": "needs the pose stage (face tracks)", "sync": "needs the pose stage (face tracks and lips)", "flame": "needs the pose stage (face landmarks for the crops)",
                       "emotion": "needs the flame stage (FLAME fits of the clips)"}
    assert DAG.active(cfg) == ("download", "normalize", "shots", "clips", "curate")  # curate uses pose when it ran
    assert DAG.skip_reasons(Config())["flame"] == "missing assets: flame_model, deca_checkpoint (see `cnas assets check`)"
    assert DAG.skip_reasons(load_config(None, ["flame.flame_model=" + __file__, "flame.deca_checkpoint=" + __file__]))["emotion"].startswith(
        "no classifier (emotion.classifier: a probe.pt trained on labelled FLAME sequences")
    syncnet = DAG.skip_reasons(load_config(None, ["sync.backend=syncnet"]))["sync"]
    assert syncnet.startswith("missing assets: sync.syncnet_model") and "sync" not in DAG.skip_reasons(Config())


def test_resources_override_the_declaration_field_by_field():
    cfg = load_config(None, ["ray.resources.speech.actors=3", "ray.resources.download.cpus=0.25"])
    assert (cfg.ray.resources["speech"].actors, cfg.ray.resources["speech"].cpus) == (3, DAG["speech"].resources.cpus)
    assert cfg.ray.resources["download"].cpus == 0.25 and cfg.ray.resources["pose"] == DAG["pose"].resources
    with pytest.raises(ValidationError, match="actor"):
        load_config(None, ["ray.resources.speech.actor=3"])  # a typo is an error, not a silent default
    from pipeline.engine.executor import stage_resources

    gpu = load_config(None, ["speech.device=cuda"])
    assert stage_resources(gpu, DAG, "speech").gpus == 1.0 and stage_resources(gpu, DAG, "normalize").gpus == 0.0


# ---------------------------------------------------------------------------------------------
# every options field, generated from the models


def _candidates(field, default) -> list:
    """Values to try instead of ``default`` for one field, from its type and constraints."""
    ann = field.annotation
    if typing.get_origin(ann) is list:  # a list option: the same list without its last item
        return [list(default)[:-1]] if default else []
    args = typing.get_args(ann)
    base = next((a for a in args if a is not type(None)), ann) if args else ann
    pattern = next((m.pattern for m in field.metadata if getattr(m, "pattern", None)), None)
    lower = next((getattr(m, "ge", None) or getattr(m, "gt", None) for m in field.metadata
                  if getattr(m, "ge", None) is not None or getattr(m, "gt", None) is not None), None)
    if base is bool:
        return [not default]
    if base is str:
        if pattern:
            return [alt for alt in re.findall(r"[A-Za-z0-9_]+", pattern) if alt != default]
        return [f"{default}_changed" if default else "changed"]
    if base is int:
        d = default if default is not None else (lower or 1)
        return [d + 1, d - 1, d + 2, d * 2, (lower or 0) + 2, 16, 64]
    if base is float:
        d = default if default is not None else (lower or 0.5)
        return [d * 0.5, d * 0.9, d + 0.5, d * 2, 0.5, 1.0]
    raise AssertionError(f"no candidate values for a field of type {ann}")


def _changed_configs():
    base = Config().model_dump(mode="json")
    for spec in DAG:
        fields = spec.options.model_fields
        for name, field in fields.items():
            default = base[spec.name][name]
            for value in _candidates(field, default):
                data = json.loads(json.dumps(base))
                data[spec.name][name] = value
                try:
                    cfg = Config.model_validate(data)
                except ValidationError:
                    continue
                if getattr(cfg, spec.name).model_dump(mode="json")[name] != default:
                    yield spec.name, name, name in output_fields(spec.options), cfg
                    break
            else:
                raise AssertionError(f"{spec.name}.{name}: found no valid other value to test")


def test_every_option_invalidates_exactly_its_stage_and_dependants():
    base = Config()
    item = SourceItem(video_id="v", uri="https://example.org/v.mp4", kind="url")
    before = {s: DAG.fingerprint(base, s, item) for s in DAG.names}
    checked = 0
    for stage, field, changes_output, cfg in _changed_configs():
        after = {s: DAG.fingerprint(cfg, s, item) for s in DAG.names}
        changed = {s for s in DAG.names if after[s] != before[s]}
        expected = {stage, *DAG.dependents(stage)} if changes_output else set()
        assert changed == expected, f"{stage}.{field}: redone {sorted(changed)}, expected {sorted(expected)}"
        checked += 1
    assert checked == sum(len(s.options.model_fields) for s in DAG)
    assert DAG.dependents("normalize") == ["shots", "speech", "pose", "identity", "sync", "clips", "curate", "flame", "emotion"]
    assert DAG.dependents("pose") == ["identity", "sync", "clips", "curate", "flame", "emotion"]
    # the cascade: pose reads the cheap passes (shots, speech), so they redo it
    assert DAG.dependents("shots") == ["pose", "identity", "sync", "clips", "curate", "flame", "emotion"]
    assert DAG.dependents("flame") == ["emotion"] and DAG.dependents("emotion") == []
    assert DAG.dependents("speech") == ["pose", "identity", "sync", "clips", "curate", "flame", "emotion"]
    assert DAG.dependents("curate") == ["flame", "emotion"]  # a curation threshold redoes curation and FLAME, not the cut


def test_a_stage_version_bump_redoes_that_stage_and_its_dependants():
    import dataclasses

    bumped = Registry([dataclasses.replace(s, version=s.version + 1) if s.name == "shots" else s for s in DAG])
    cfg = Config()
    changed = {s for s in DAG.names if DAG.fingerprint(cfg, s) != bumped.fingerprint(cfg, s)}
    assert changed == {"shots", "pose", "identity", "sync", "clips", "curate", "flame", "emotion"}  # pose reads the shots (cascade)
    with pytest.raises(ValidationError, match="no stage named"):
        load_config(None, ["ray.resources.speach.actors=2"])
