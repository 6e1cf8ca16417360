"""Stage declarations and the registry the executor runs.

A ``StageSpec`` says everything the executor needs to know about a stage, in the spirit of NeMo
Curator's ``ProcessingStage`` and datatrove's ``PipelineStep``: its name, the stages whose outputs
it reads, its options model (the config section of the same name), its output record, how to tell
that its outputs still exist, the resources it asks for, how to load its models once per actor,
and the function that runs it on one video. The stage function itself lives in ``stages/`` and
knows nothing about Ray or the work dir; ``StageSpec.run`` is the thin adapter between the two.

A ``Registry`` is an ordered list of specs (each after the stages it reads) with what follows from
the declarations: which stages a config runs and why the others are skipped, the stages that
depend on a stage, and the resume fingerprint of a stage. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pydantic import BaseModel, Field

from schemas import SourceItem
from schemas.settings import Settings, output_fields

if TYPE_CHECKING:
    from pipeline.engine.workdir import WorkDir


class Resources(Settings):
    """What one task (file stage) or one actor (model stage) of a stage asks Ray for."""

    cpus: float = Field(1.0, gt=0, description="CPUs per task or actor")
    gpus: float = Field(0.0, ge=0, description="GPUs per actor; 0 with the stage's device=cuda means 1")
    actors: int = Field(1, ge=1, description="model stages: at most this many actors per node with CPUs (each loads the models once); the pool grows to it as videos queue")
    batch_size: int = Field(1, ge=1, description="model stages: videos per actor call")


@dataclass
class StageContext:
    """What a stage's ``run`` adapter gets for one video."""

    item: SourceItem
    options: Any  # the stage's options model
    inputs: dict[str, Any]  # output record of every stage it reads that ran for this config
    work: WorkDir
    models: Any = None  # what ``setup`` returned (model stages), else None
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why this config does not run it
    input_options: dict[str, Any] = field(default_factory=dict)  # options of every stage in ``inputs`` (the fingerprint covers them)


@dataclass(frozen=True)
class StageSpec:
    """The declaration of one stage. See the module docstring; ``docs/architecture.md`` shows one."""

    name: str
    options: type[BaseModel]
    output: type[BaseModel]
    run: Callable[[StageContext], BaseModel]
    #: Stages this one cannot run without, each with what it needs from it (the skip reason says so).
    requires: Mapping[str, str] = field(default_factory=dict)
    #: Stages this one reads when they ran (``ctx.inputs[name]`` is absent otherwise).
    uses: tuple[str, ...] = ()
    #: Loads the models once per actor from the options; a stage with ``setup`` runs in an actor pool.
    setup: Callable[[Any], Any] | None = None
    #: Default resources; ``ray.resources.<name>`` in the config overrides them field by field.
    resources: Resources = field(default_factory=Resources)
    #: Whether the files an output record describes still exist (a resumed entry counts only then).
    outputs_exist: Callable[[Any, StageContext], bool] | None = None
    #: Why the stage cannot run with these options (e.g. missing user-supplied weights), or None.
    unavailable: Callable[[Any], str | None] | None = None
    #: Checked before a run starts (raise ``StageError`` naming what is missing); model stages only.
    preflight: Callable[[Any], Any] | None = None
    #: The model files the options name, for ``cnas assets check``: ``{asset: status}``, a status
    #: starting with ``ok``, ``optional`` or ``missing`` (a missing one makes the check fail).
    assets: Callable[[Any], dict[str, str]] | None = None
    #: The output is the video's clip set (the shard sink reads the last such stage that ran).
    emits_clips: bool = False
    #: Whether clip records name this stage: in ``ClipRecord.stages`` when it contributed to the clip
    #: (a predicate on the clip when not every clip gets something), in ``skipped_stages`` with the
    #: reason when the config skips it. The executor marks them (``Registry.mark_clips``).
    on_clips: bool | Callable[[Any], bool] = False
    #: Bump when the stage's code or output record changes what it writes for the same options:
    #: the fingerprint covers it, so ledger entries of the older version are redone.
    version: int = 1

    @property
    def deps(self) -> tuple[str, ...]:
        """Every stage this one reads, required or not: its fingerprint covers theirs."""
        return (*self.requires, *self.uses)

    @property
    def is_model_stage(self) -> bool:
        return self.setup is not None

    @property
    def optional(self) -> bool:
        """A stage with an ``enabled`` option can be switched off."""
        return "enabled" in self.options.model_fields


class Registry:
    """Stage specs in execution order; every spec comes after the stages it reads."""

    def __init__(self, specs: Iterable[StageSpec]):
        self.specs: dict[str, StageSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: StageSpec) -> "Registry":
        if spec.name in self.specs:
            raise ValueError(f"stage {spec.name!r} is declared twice")
        unknown = [d for d in spec.deps if d not in self.specs]
        if unknown:
            raise ValueError(f"stage {spec.name!r} reads {unknown}, which are not declared before it")
        self.specs[spec.name] = spec
        return self

    def __iter__(self):
        return iter(self.specs.values())

    def __getitem__(self, name: str) -> StageSpec:
        return self.specs[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def options(self, cfg: Any, name: str) -> Any:
        """The options of stage ``name``: the config section of the same name."""
        section = getattr(cfg, name, None)
        if not isinstance(section, self.specs[name].options):
            raise TypeError(f"config has no section {name!r} of type {self.specs[name].options.__name__} for stage {name!r}")
        return section

    def skip_reasons(self, cfg: Any) -> dict[str, str]:
        """Every stage this config does not run, with the reason (disabled, a required stage does not
        run, or the stage is unavailable, e.g. missing weights), in execution order."""
        reasons: dict[str, str] = {}
        for spec in self:
            opts = self.options(cfg, spec.name)
            if spec.optional and not opts.enabled:
                reasons[spec.name] = f"disabled in config ({spec.name}.enabled=false)"
                continue
            missing = [(d, why) for d, why in spec.requires.items() if d in reasons]
            if missing:
                reasons[spec.name] = "; ".join(f"needs the {d} stage ({why})" for d, why in missing)
                continue
            why_not = spec.unavailable(opts) if spec.unavailable else None
            if why_not:
                reasons[spec.name] = why_not
        return reasons

    def active(self, cfg: Any) -> tuple[str, ...]:
        """The stages this config runs, in execution order."""
        skipped = self.skip_reasons(cfg)
        return tuple(n for n in self.names if n not in skipped)

    def clip_set_stages(self) -> list[str]:
        """The stages that emit a video's clip set, the last first: the first of them with an ``ok``
        ledger entry holds the video's final clips (FLAME re-emits them and may reject more)."""
        return [name for name, spec in reversed(self.specs.items()) if spec.emits_clips]

    def mark_clips(self, clips: list, ran: set[str], skipped: Mapping[str, str]) -> None:
        """Fill each clip record's ``stages`` and ``skipped_stages`` after a clip-emitting stage: every
        stage declared ``on_clips`` that ran for this video (``ran``) and contributed to the clip is
        listed, in execution order; every one the config skips is given its reason."""
        for clip in clips:
            for name, spec in self.specs.items():
                if not spec.on_clips:
                    continue
                if name in ran:
                    if (spec.on_clips is True or spec.on_clips(clip)) and name not in clip.stages:
                        clip.stages.append(name)
                        clip.skipped_stages.pop(name, None)
                elif name in skipped:
                    clip.skipped_stages[name] = skipped[name]

    def dependents(self, name: str) -> list[str]:
        """Every stage that (transitively) reads ``name``'s output, in execution order."""
        out: list[str] = []
        for spec in self:
            if spec.name != name and any(d == name or d in out for d in spec.deps):
                out.append(spec.name)
        return out

    def fingerprint(self, cfg: Any, name: str, item: SourceItem | None = None) -> str:
        """Hash of the source, the output-changing options of this stage and, recursively, of the
        stages it reads: a ledger entry made under other options or from another input is redone."""

        def parts(st: str) -> dict:
            opts = self.options(cfg, st)
            own = opts.model_dump(mode="json", include=set(output_fields(type(opts))))
            return {"own": own, "version": self.specs[st].version, "deps": {d: parts(d) for d in self.specs[st].deps}}

        payload = {"stage": name, "config": parts(name), "source": source_digest(item) if item else None}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def source_digest(item: SourceItem) -> str:
    """What identifies the input itself: URI, metadata, and for local files their size and mtime."""
    parts = [item.uri, json.dumps(item.metadata, sort_keys=True, default=str)]
    if item.kind == "file" and os.path.exists(item.uri):
        st = os.stat(item.uri)
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    return "|".join(parts)
