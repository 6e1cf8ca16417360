"""Pydantic records: the contract between stages, the pipeline, shards and consumers."""

from .base import SAFE_ID_PATTERN, SCHEMA_VERSION, Record
from . import shard
from .curation import ClipCuration, FingerprintEntry
from .clip import CLIP_KEY_PATTERN, ClipRecord, GateCheck, ClipSet, RejectSpan
from .emotion import EMOTIONS, EmotionEstimate
from .flame import FlameFit
from .media import NormalizedMedia, ProbeInfo, Shot, ShotList
from .pose import PART_NAMES, PoseResult, PoseTrack
from .run import FailureRecord, LedgerEntry, ManifestRow, RunStats, StageTiming
from .source import DownloadResult, SourceItem
from .speech import Segment, Transcript, Word
from .sync import ClipSync, SyncResult
from .identity import Identity, IdentityRegistry, IdentityResult, TrackEmbedding
from .release import ClipSource, RebuildRecipe, RebuildResult

#: Every exported record type, by the name its JSON Schema file gets.
ALL_RECORDS: dict[str, type[Record]] = {
    "source_item": SourceItem,
    "download_result": DownloadResult,
    "probe_info": ProbeInfo,
    "normalized_media": NormalizedMedia,
    "shot_list": ShotList,
    "transcript": Transcript,
    "pose_track": PoseTrack,
    "pose_result": PoseResult,
    "sync_result": SyncResult,
    "clip_sync": ClipSync,
    "identity_result": IdentityResult,
    "identity_registry": IdentityRegistry,
    "flame_fit": FlameFit,
    "clip": ClipRecord,
    "clip_curation": ClipCuration,
    "emotion_estimate": EmotionEstimate,
    "fingerprint_entry": FingerprintEntry,
    "clip_set": ClipSet,
    "manifest_row": ManifestRow,
    "failure": FailureRecord,
    "ledger_entry": LedgerEntry,
    "run_stats": RunStats,
    "clip_source": ClipSource,
    "rebuild_recipe": RebuildRecipe,
    "rebuild_result": RebuildResult,
}

__all__ = [
    "ALL_RECORDS", "CLIP_KEY_PATTERN", "EMOTIONS", "EmotionEstimate", "PART_NAMES", "SAFE_ID_PATTERN", "SCHEMA_VERSION",
    "ClipRecord", "ClipSet", "GateCheck", "RejectSpan", "ClipSource", "RebuildRecipe", "RebuildResult", "ClipSync", "SyncResult", "Identity", "IdentityRegistry", "IdentityResult", "TrackEmbedding", "DownloadResult", "FailureRecord", "LedgerEntry", "FlameFit", "ManifestRow", "NormalizedMedia",
    "PoseResult", "PoseTrack", "ProbeInfo", "Shot", "ShotList", "Record", "RunStats", "Segment", "SourceItem", "StageTiming",
    "Transcript", "Word", "export_json_schemas", "shard",
]


def export_json_schemas(out_dir: str) -> list[str]:
    """Write ``<name>.schema.json`` for every record type into ``out_dir``; return the paths."""
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, model in ALL_RECORDS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://cnas.dataset/schemas/{SCHEMA_VERSION}/{name}.schema.json"
        schema["x-schema-version"] = SCHEMA_VERSION
        path = os.path.join(out_dir, f"{name}.schema.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(schema, f, indent=2, ensure_ascii=False)
            f.write("\n")
        paths.append(path)
    return paths
