"""The config sections both trainers share (``data``, ``run``) and preset loading.

Each trainer composes its config from these and its own sections (``trainers/<name>/config.py``);
every section is a ``schemas.settings.Settings``, so unknown keys are errors and ``--set`` overrides
use the same ``section.key=value`` syntax as the ingestion config.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import Field

from schemas.settings import Settings, apply_overrides

ConfigT = TypeVar("ConfigT", bound=Settings)


class DataSection(Settings):
    """What every trainer reads from the shards (each trainer adds its own keys)."""

    urls: str | list[str] | None = Field(None, description="shards: paths, brace pattern, or a release's <split>.index.json")
    window_frames: int = Field(50, ge=2, description="frames per training window at 25 fps")
    batch_size: int = Field(16, ge=1, description="per worker")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    shuffle_buffer: int = Field(256, ge=0)
    val_urls: str | list[str] | None = Field(None, description="held-out shards for validation, e.g. a release's val.index.json; "
                                             "none: no validation")
    max_member_mb: int = Field(512, ge=1, description="largest tar member the loader reads (MiB); a larger or a sparse "
                                                       "member fails its shard before it is read")


class ValidationSettings(Settings):
    """When and on how much held-out data a trainer validates (part of each trainer's ``train``)."""

    val_every: int = Field(1000, ge=0, description="validate every this many steps (and at the last); 0: never")
    val_batches: int = Field(8, ge=1, description="held-out batches per worker (first window of each clip, decoded once)")
    val_timesteps: int = Field(8, ge=1, description="fixed diffusion timesteps the validation loss is averaged over")


class RunSection(Settings):
    """Where a run keeps its checkpoints and logs, and how many workers train it."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="run name: folder under storage_path")
    storage_path: str = Field("runs", description="checkpoints and logs: local path or URI (s3://, gs://) Ray Train can write")
    use_ray: bool = Field(True, description="false: train in this process without Ray (debugging, tests)")
    address: str | None = Field(None, description="Ray cluster address; default: an embedded local Ray")
    num_workers: int = Field(1, ge=1, description="data-parallel workers (DDP)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=0, description="Ray Train FailureConfig: worker-group restarts from the last checkpoint")
    keep_checkpoints: int = Field(3, ge=1)
    async_checkpoints: bool = Field(True, description="Ray Train: upload checkpoints to storage_path in the background "
                                    "(the step waits only for the local write)")
    restore_timeout_s: float = Field(1800.0, gt=0, description="Ray Train: how long a worker waits for its node's first "
                                     "worker to fetch the checkpoint it resumes from")
    resource_timeout_s: float = Field(900.0, ge=0, description="with run.address: how long to wait for the cluster to "
                                      "scale up to the workers' CPUs/GPUs before giving up (an embedded Ray never waits)")


#: Config entries (section, key) that hold local paths or URIs. Ray Train 2.x workers run in a
#: working directory of their own, so the driver makes every relative local path absolute before
#: launch (``resolve_paths``); URIs (``s3://…``) and absolute paths are left as they are.
PATH_KEYS = (("data", "urls"), ("data", "val_urls"), ("data", "features"), ("run", "storage_path"), ("model", "vae"),
             ("model", "audio_backbone"), ("model", "text_backbone"), ("model", "init_2d"))


def _absolute(value: str, cwd: str) -> str:
    if "://" in value or not value:
        return value
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))


def resolve_paths(config: dict[str, Any], cwd: str | None = None) -> dict[str, Any]:
    """A copy of a trainer's config dict with the ``PATH_KEYS`` entries resolved against ``cwd``
    (default: this process's working directory). A list of shard paths is resolved item by item; a
    brace pattern keeps its braces (``shards/cnas-{000000..000009}.tar`` → ``/abs/shards/…``)."""
    cwd = cwd or os.getcwd()
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for section, key in PATH_KEYS:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, str):
            out[section][key] = _absolute(value, cwd)
        elif isinstance(value, list):
            out[section][key] = [_absolute(v, cwd) if isinstance(v, str) else v for v in value]
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, nested mappings merged key by key (a YAML file edits a preset)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def with_overrides(preset: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A preset derived from another: ``changes`` merged over a deep copy of ``preset``."""
    return _merge(copy.deepcopy(preset), changes)


def load_preset_config(model_cls: type[ConfigT], presets: dict[str, dict[str, Any]], config: str | None,
                       overrides: list[str] | None = None) -> ConfigT:
    """``config`` is a preset name or a YAML path (whose optional ``preset:`` key picks the starting
    point); overrides go last."""
    data: dict[str, Any] = {}
    if config in presets:
        data = {"preset": config, **copy.deepcopy(presets[config])}  # overrides must not edit the preset
    elif config:
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: expected a mapping at the top level")
        name = loaded.get("preset")
        if name is not None and name not in presets:
            raise ValueError(f"{config}: unknown preset {name!r} (known: {', '.join(presets)})")
        data = _merge(copy.deepcopy(presets.get(name, {})), loaded)
    return model_cls.model_validate(apply_overrides(data, overrides or []))
