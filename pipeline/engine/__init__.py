"""The DAG engine: stage registry and declarations, executor on Ray Data, runner, ledger, work dir,
config, shard sink, sources, run-wide identities, locks, console (docs/architecture.md)."""
