"""The layout of an ingest run's output folder, in one place.

    OUT/config.yaml      the resolved config of the last run (``cnas ingest`` writes it first)
    OUT/sources.jsonl    one ``SourceItem`` per video
    OUT/manifest.jsonl   one ``ManifestRow`` per sample, and ``manifest.digest`` (what it was built from)
    OUT/shards/          the WebDataset shards (``shards.new`` while a new set is written)
    OUT/failures.jsonl   one ``FailureRecord`` per failed video
    OUT/stats.json       ``RunStats`` of the last run
    OUT/identities.json  the run-wide identity registry
    OUT/logs/            driver, library and Ray logs; ``progress.json``
    OUT/work/            the work dir, unless ``work_dir`` puts it elsewhere
    OUT/.cnas.lock       held while a run writes here

The runner, the shard sink, ``cnas status``, the release steps and ``cnas inspect`` read and write
a run through this class; nothing else spells these names.
"""

from __future__ import annotations

import yaml

from schemas import FailureRecord, ManifestRow, RunStats, SourceItem

from pipeline.engine.config import Config
from pipeline.engine.lock import LOCK_FILE
from pipeline.engine.workdir import WorkDir


class RunFolder:
    """An ingest run's output folder (a local path or an fsspec URI)."""

    CONFIG = "config.yaml"
    SOURCES = "sources.jsonl"
    MANIFEST = "manifest.jsonl"
    DIGEST = "manifest.digest"
    SHARDS = "shards"
    SHARDS_STAGING = SHARDS + ".new"
    SHARDS_OLD = SHARDS + ".old"
    FAILURES = "failures.jsonl"
    STATS = "stats.json"
    IDENTITIES = "identities.json"
    FINGERPRINTS = "fingerprints.jsonl"
    LOGS = "logs"
    WORK = "work"
    LOCK = LOCK_FILE

    def __init__(self, uri: str | WorkDir):
        # a reader must not create the folder it was asked about; the runner passes its own WorkDir
        self.dir = uri if isinstance(uri, WorkDir) else WorkDir(uri, create=False)

    @property
    def uri(self) -> str:
        return self.dir.uri

    def path(self, *parts: str) -> str:
        """Full path (or URI) of ``parts`` under the folder."""
        return self.dir.path(*parts)

    def is_run(self) -> bool:
        """Whether the folder holds an ingest run (``sources.jsonl`` and ``config.yaml``)."""
        return self.dir.exists(self.SOURCES) and self.dir.exists(self.CONFIG)

    # -- what a run records ----------------------------------------------------------------------

    def config(self) -> Config:
        """The config the last run used."""
        return Config.model_validate(yaml.safe_load(self.dir.read_text(self.CONFIG)) or {})

    def sources(self) -> list[SourceItem]:
        return [SourceItem.model_validate_json(l) for l in self.dir.read_text(self.SOURCES).splitlines() if l.strip()]

    def manifest(self) -> list[ManifestRow]:
        """The manifest's rows; none before the first run finished."""
        if not self.dir.exists(self.MANIFEST):
            return []
        return [ManifestRow.model_validate_json(l) for l in self.dir.read_text(self.MANIFEST).splitlines() if l.strip()]

    def stats(self) -> RunStats | None:
        return RunStats.model_validate_json(self.dir.read_text(self.STATS)) if self.dir.exists(self.STATS) else None

    def failures(self) -> list[FailureRecord]:
        if not self.dir.exists(self.FAILURES):
            return []
        return [FailureRecord.model_validate_json(l) for l in self.dir.read_text(self.FAILURES).splitlines() if l.strip()]

    def shards_dir(self) -> str:
        return self.path(self.SHARDS)

    def shard_path(self, name: str) -> str:
        """Path of one shard named in the manifest (checked to stay in ``shards/``)."""
        return self.path(self.SHARDS, name)

    def shard_paths(self) -> list[str]:
        """The shards the manifest names, in name order."""
        return [self.shard_path(s) for s in sorted({r.shard for r in self.manifest()})]

    def logs_dir(self) -> str:
        return self.path(self.LOGS)

    def work_uri(self, cfg: Config | None = None) -> str:
        """The run's work dir: ``work_dir`` of the config, else ``OUT/work``."""
        cfg = cfg if cfg is not None else self.config()
        return cfg.work_dir or self.path(self.WORK)

    def work(self, cfg: Config | None = None) -> WorkDir:
        return WorkDir(self.work_uri(cfg))

    # -- writers (the runner) --------------------------------------------------------------------

    def write_inputs(self, config_yaml: str, sources: list[SourceItem]) -> None:
        """The config and sources of a run that starts (``cnas status`` reads them while it runs)."""
        self.dir.write_text(config_yaml, self.CONFIG)
        self.dir.write_text("".join(s.to_json() + "\n" for s in sources), self.SOURCES)

    def write_failures(self, failures: list[FailureRecord]) -> None:
        self.dir.write_text("".join(f.to_json() + "\n" for f in failures), self.FAILURES)

    def write_stats(self, stats: RunStats) -> None:
        self.dir.write_text(stats.model_dump_json(indent=2) + "\n", self.STATS)
