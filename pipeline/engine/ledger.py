"""Per-video, per-stage resume ledger: ``<work>/ledger/<video_id>/<stage>.json`` (atomic writes).

A stage whose entry says ``ok`` (and whose outputs still exist) is not run again; a ``failed``
entry is re-tried unless the run says otherwise. The ledger, not the shards, is the source of
truth: shards are rebuilt from it, so a killed run never leaves a half-written sample behind.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import ValidationError

from schemas import FailureRecord, LedgerEntry

from pipeline.engine.workdir import WorkDir

LEDGER_DIR = "ledger"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_entry(work: WorkDir, video_id: str, stage: str) -> LedgerEntry | None:
    """The ledger entry, or None when there is none or it cannot be read (then the stage re-runs)."""
    if not work.exists(LEDGER_DIR, video_id, f"{stage}.json"):
        return None
    try:
        return LedgerEntry.model_validate_json(work.read_text(LEDGER_DIR, video_id, f"{stage}.json"))
    except (ValidationError, OSError, ValueError):
        return None


def write_ok(work: WorkDir, video_id: str, stage: str, output, seconds: float, fingerprint: str | None = None) -> None:
    entry = LedgerEntry(
        video_id=video_id, stage=stage, status="ok", output=output, seconds=seconds, finished_at=now_iso(), fingerprint=fingerprint
    )
    work.write_text(entry.model_dump_json(), LEDGER_DIR, video_id, f"{stage}.json")


def write_failed(work: WorkDir, failure: FailureRecord, seconds: float, fingerprint: str | None = None) -> None:
    entry = LedgerEntry(
        video_id=failure.video_id, stage=failure.stage, status="failed", failure=failure, seconds=seconds, finished_at=now_iso(),
        fingerprint=fingerprint,
    )
    work.write_text(entry.model_dump_json(), LEDGER_DIR, failure.video_id, f"{failure.stage}.json")


def forget(work: WorkDir, video_id: str, stages: list[str]) -> None:
    """Remove the entries of ``stages``: their outputs are about to be rewritten or go stale."""
    for stage in stages:
        work.remove(LEDGER_DIR, video_id, f"{stage}.json")
