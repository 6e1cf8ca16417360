"""Settings: the base of every options/config model, and the ``section.key=value`` override syntax.

Shared by the ingestion config (``pipeline/engine/config.py``, composed of the stages' options models)
and the trainers' run configs, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

#: ``json_schema_extra`` key of a field that changes how a stage runs but not what it writes
#: (retries, threads, batch sizes, caches): such fields stay out of the resume fingerprint.
NOT_IN_OUTPUT = "x-not-in-output"


class Settings(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def runtime_field(default: Any = ..., **kwargs: Any) -> Any:
    """A ``Field`` that does not change a stage's output (so it is left out of the fingerprint)."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[NOT_IN_OUTPUT] = True
    return Field(default, json_schema_extra=extra, **kwargs)


def output_fields(model: type[BaseModel]) -> list[str]:
    """Names of the fields of ``model`` that change what a stage writes (all but ``runtime_field``s)."""
    return [name for name, f in model.model_fields.items()
            if not (isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(NOT_IN_OUTPUT))]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b=value`` items (values parsed as YAML) into the nested dict ``data``."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data
