"""Run configuration: defaults in one place, a YAML file on top, command-line overrides last.

Each stage's section is that stage's options model, defined next to the stage in ``stages/``;
this module only composes them with the run-level sections (shards, release, Ray). The effective
configuration is written next to every run's outputs (``config.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from schemas.settings import Settings, apply_overrides
from stages.clips import ClipOptions
from stages.curate import CurateOptions
from stages.download import DownloadOptions
from stages.emotion import EmotionOptions
from stages.flame import FlameOptions
from stages.normalize import NormalizeOptions
from stages.pose import PoseOptions
from stages.shots import ShotOptions
from stages.speech import SpeechOptions
from stages.identity import IdentityOptions
from stages.sync import SyncOptions

from pipeline.engine.registry import Resources

__all__ = ["Config", "RayConfig", "ReleaseConfig", "ShardConfig", "apply_overrides", "dump_config", "load_config"]


class ReleaseConfig(Settings):
    name: str = "CNAS"
    split_ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "val": 0.05, "test": 0.05})
    seed: int = 0
    target_shard_mb: float = Field(512.0, gt=0)
    max_shard_count: int = Field(10000, ge=1)
    speaker_keys: list[str] = Field(default_factory=lambda: ["speaker", "anchor"], description="source metadata keys naming the speaker; else the video id")
    split_by_identity: bool = Field(True, description="splits disjoint by face identity (clip.identity) first, then speaker_keys, then video id")
    licence: str = Field("research-only; see the terms below", description="licence/terms field of the dataset card")
    terms: str = "Clips come from third-party broadcasts; use for non-commercial research; respect the rights of the depicted persons."

    @model_validator(mode="after")
    def _ratios(self) -> "ReleaseConfig":
        if abs(sum(self.split_ratios.values()) - 1.0) > 1e-6 or any(v < 0 for v in self.split_ratios.values()):
            raise ValueError(f"release.split_ratios must be non-negative and sum to 1, got {self.split_ratios}")
        return self


class ShardConfig(Settings):
    max_count: int = Field(1000, ge=1, description="samples per shard")
    max_size_mb: float = Field(1024.0, gt=0, description="bytes per shard (soft: a shard closes once over)")
    prefix: str = Field("cnas", pattern=r"^[A-Za-z0-9_-]+$")


def _declared_resources() -> dict[str, Resources]:
    from pipeline.engine.dag import DAG

    return {spec.name: spec.resources.model_copy() for spec in DAG}


class RayConfig(Settings):
    address: str | None = Field(None, description="existing cluster ('auto' or ray://host:10001); None: embedded local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all)")
    resources: dict[str, Resources] = Field(
        default_factory=_declared_resources,
        description="per stage: cpus per task/actor, gpus per actor, actors in a model stage's pool, batch_size (videos per actor call); "
                    "defaults from the stage declarations, e.g. --set ray.resources.speech.actors=2")
    reserve_op_resources: bool = Field(
        False, description="Ray Data's per-operator resource reservation; off: any stage may use idle CPUs")
    max_blocks: int = Field(1000, ge=1, description="at most this many Ray Data blocks (one video per block below it)")

    @field_validator("resources", mode="before")
    @classmethod
    def _over_declared(cls, value: Any) -> Any:
        """A partial entry (``ray.resources.speech.actors=2``) overrides the declared defaults field by field."""
        if not isinstance(value, dict):
            return value
        merged = {k: v.model_dump() for k, v in _declared_resources().items()}
        unknown = sorted(set(value) - set(merged))
        if unknown:
            raise ValueError(f"ray.resources: no stage named {unknown} (stages: {', '.join(merged)})")
        for stage, given in value.items():
            given = given.model_dump() if isinstance(given, BaseModel) else given
            merged[stage] = {**merged.get(stage, {}), **given} if isinstance(given, dict) else given
        return merged


class Config(Settings):
    """Everything one ingestion run needs to know besides its sources and output folder."""

    work_dir: str | None = Field(None, description="local path or fsspec URI; default <out>/work")
    retry_failed: bool = Field(True, description="re-try videos that failed in an earlier run")
    # One section per stage: the stage's own options model (defined next to the stage).
    download: DownloadOptions = Field(default_factory=DownloadOptions)
    normalize: NormalizeOptions = Field(default_factory=NormalizeOptions)
    shots: ShotOptions = Field(default_factory=ShotOptions)
    pose: PoseOptions = Field(default_factory=PoseOptions)
    speech: SpeechOptions = Field(default_factory=SpeechOptions)
    identity: IdentityOptions = Field(default_factory=IdentityOptions)
    sync: SyncOptions = Field(default_factory=SyncOptions)
    clips: ClipOptions = Field(default_factory=ClipOptions)
    curate: CurateOptions = Field(default_factory=CurateOptions)
    flame: FlameOptions = Field(default_factory=FlameOptions)
    emotion: EmotionOptions = Field(default_factory=EmotionOptions)
    shards: ShardConfig = Field(default_factory=ShardConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _clip_fits_frame_grid(self) -> "Config":
        if self.clips.min_clip_s > self.clips.max_clip_s:
            raise ValueError(f"clips.min_clip_s={self.clips.min_clip_s} > clips.max_clip_s={self.clips.max_clip_s}")
        frames = self.clips.window_s * self.normalize.fps
        if abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"clips.window_s={self.clips.window_s} is not a whole number of frames at {self.normalize.fps} fps")
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path:
        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        data = loaded
    apply_overrides(data, overrides or [])
    return Config.model_validate(data)


def dump_config(config: Config) -> str:
    """The effective configuration as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
