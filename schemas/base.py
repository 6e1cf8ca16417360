"""Shared base for every record type: a schema version (at the top of a record's JSON) and strict fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

#: Version of the record layout. Bump the minor part for added optional fields, the major part
#: for anything a consumer would read differently (2.0.0: pose.npz layout 2 and ``schema_version``
#: only at the top of a record; 2.1.0: the clip's ``curation`` record; 2.2.0: the clip's
#: ``emotion_estimate``; docs/shard_format.md "Layout versions").
SCHEMA_VERSION = "2.2.0"

#: Characters allowed in ids that become file names and WebDataset keys (no dots: WebDataset
#: splits the key from the member suffix at the first dot).
SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


class Record(BaseModel):
    """Base of every record that crosses a stage boundary or lands in a shard.

    ``schema_version`` is written once, at the top of a record's JSON: records nested in it (a clip's
    transcript, its segments and words, its sync) are of the same version and are dumped without
    one. They still accept it when parsing (JSON of 1.x repeats it in every nested record); a nested
    record's own ``schema_version`` attribute then says nothing (the top-level one counts)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)

    schema_version: str = SCHEMA_VERSION

    @model_serializer(mode="wrap")
    def _version_at_top(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in type(self).model_fields:
                if name in data:
                    _drop_versions(getattr(self, name), data[name])
        return data

    def to_json(self) -> str:
        """Compact JSON, stable key order (the declaration order)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes):
        return cls.model_validate_json(text)


def _drop_versions(value: Any, dumped: Any) -> None:
    """Remove ``schema_version`` from the dumped form of the records directly in a field's value (a
    record, or a list/tuple/dict of them); deeper ones already lost theirs in their parent's serializer."""
    if isinstance(value, Record) and isinstance(dumped, dict):
        dumped.pop("schema_version", None)
    elif isinstance(value, (list, tuple)) and isinstance(dumped, (list, tuple)) and len(value) == len(dumped):
        for v, d in zip(value, dumped):
            _drop_versions(v, d)
    elif isinstance(value, dict) and isinstance(dumped, dict):
        for k, v in value.items():
            if k in dumped:
                _drop_versions(v, dumped[k])
