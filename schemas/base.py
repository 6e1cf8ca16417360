"""Shared base for every record type: a schema version and strict fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Version of the record layout. Bump the minor part for added optional fields, the major part
#: for anything a consumer would read differently.
SCHEMA_VERSION = "1.4.0"

#: Characters allowed in ids that become file names and WebDataset keys (no dots: WebDataset
#: splits the key from the member suffix at the first dot).
SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


class Record(BaseModel):
    """Base of every record that crosses a stage boundary or lands in a shard."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)

    schema_version: str = SCHEMA_VERSION

    def to_json(self) -> str:
        """Compact JSON, stable key order (the declaration order)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes):
        return cls.model_validate_json(text)
