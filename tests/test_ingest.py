"""End to end: the real DAG (Ray Data on an embedded local Ray, ffmpeg, yt-dlp, WebDataset)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds

from cli_helpers import cnas
from geometry.landmark_codec import decode_pose_member
from pipeline.engine.config import load_config
from pipeline.engine.runner import run_ingest
from schemas import ClipRecord, FailureRecord, ManifestRow, RunStats

# speech.hygiene off: Whisper base hears espeak-ng Mandarin as loops, which hygiene rightly flags
# (tests/test_speech.py covers it); these tests are about ingestion mechanics. They ingest the same
# files under several ids (local, http, an unsafe id) on purpose: the copies are kept, grouped.
FAST = ["speech.hygiene=false", "curate.duplicates=keep", "clips.min_clip_s=1", "normalize.max_height=240", "clips.min_face_px=0", "download.retries=0", "download.socket_timeout_s=5"]
# Resume and shard mechanics need no models: fixed windows, file stages only.
FILES_ONLY = [*FAST, "clips.mode=fixed", "clips.window_s=1", "shots.enabled=false", "pose.enabled=false", "speech.enabled=false", "curate.enabled=false"]
EXPECTED_FAILURES = {
    "empty": ("normalize", "empty_file"),
    "truncated": ("normalize", "unreadable"),
    "text": ("normalize", "unreadable"),
    "audio_only": ("normalize", "no_video"),
    "video_only": ("normalize", "no_audio"),
    "http_404": ("download", "not_found"),
    "missing_path": ("download", "not_found"),
}


def _write_sources(path: Path, media: Path, http: str) -> Path:
    rows = [
        {"path": str(media / "zh_a.mp4"), "id": "local_zh", "language": "zh", "licence": "CC-BY-4.0"},
        {"url": f"{http}/en_b.mp4", "id": "http_en", "language": "en"},
        {"url": (media / "zh_a.mp4").as_uri(), "id": "fileurl_zh"},
        {"path": str(media / "en_b.mp4"), "id": "../../escape.attempt", "language": "en"},  # English: under the zh default its text is low_logprob
        {"path": str(media / "empty.mp4"), "id": "empty"},
        {"path": str(media / "truncated.mp4"), "id": "truncated"},
        {"path": str(media / "text.mp4"), "id": "text"},
        {"path": str(media / "audio_only.m4a"), "id": "audio_only"},
        {"path": str(media / "video_only.mp4"), "id": "video_only"},
        {"url": f"{http}/does-not-exist.mp4", "id": "http_404"},
        {"path": str(media / "nowhere.mp4"), "id": "missing_path"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_ingest_end_to_end_with_bad_inputs(tmp_path, media_dir, http_server, ray_session):
    sources = _write_sources(tmp_path / "sources.jsonl", media_dir, http_server)
    media_before = _tree(media_dir)
    out = tmp_path / "run"
    result = run_ingest(str(sources), str(out), load_config(None, FAST), echo=lambda m: None)

    # Every bad input is a failure record with its stage and reason; the good ones went through.
    failures = [FailureRecord.model_validate_json(l) for l in (out / "failures.jsonl").read_text().splitlines()]
    assert {f.video_id: (f.stage, f.reason) for f in failures} == EXPECTED_FAILURES
    assert all(f.message for f in failures)
    stats = RunStats.model_validate_json((out / "stats.json").read_text())
    assert (stats.videos_in, stats.videos_ok, stats.videos_failed) == (11, 4, 7)
    assert stats.failures_by_reason["normalize/unreadable"] == 2
    assert {"download", "normalize", "clips", "shards"} <= set(stats.stage_timings)

    # Nothing was written outside the output folder; the unsafe id became a safe one inside it.
    assert _tree(media_dir) == media_before
    assert set(os.listdir(tmp_path)) == {"sources.jsonl", "run"}
    assert not any(".." in p or "escape.attempt" in p for p in _tree(out))
    escaped = [r for r in result.manifest if r.video_id.startswith("escape_attempt")]
    assert escaped, "the video with an unsafe id should still be processed under a safe id"

    # Manifest: one row per sample, sha256 and sizes match the tar members.
    rows = [ManifestRow.model_validate_json(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows == result.manifest and len(rows) == stats.clips > 0
    assert [r.key for r in rows] == sorted(r.key for r in rows)
    by_key = {r.key: r for r in rows}
    members: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, suffix = m.name.partition(".")
                members.setdefault(key, {})[suffix] = tar.extractfile(m).read()
                assert by_key[key].shard == shard.name
    assert set(members) == set(by_key)
    for key, files in members.items():
        assert set(files) == {"json", "mp4", "wav", "pose.npz"}
        assert {s: hashlib.sha256(b).hexdigest() for s, b in files.items()} == by_key[key].member_sha256
        assert {s: len(b) for s, b in files.items()} == by_key[key].member_bytes

    # Readable by webdataset, and each json is a valid clip record matching its media.
    import soundfile as sf

    seen = 0
    for sample in wds.WebDataset([str(p) for p in sorted((out / "shards").glob("*.tar"))], shardshuffle=False):
        clip = ClipRecord.model_validate_json(sample["json"])
        assert clip.key == sample["__key__"] and clip.members == ["json", "mp4", "wav", "pose.npz"]
        audio, sr = sf.read(io.BytesIO(sample["wav"]))
        assert sr == 16000 and len(audio) == clip.num_audio_samples and clip.end_s - clip.start_s >= 1.0
        pose = decode_pose_member(sample["pose.npz"])  # either pose.npz layout (docs/shard_format.md)
        assert pose["part_confidences"].shape == (clip.num_frames, 5) and pose["body"].shape == (clip.num_frames, 33, 3)
        assert {"shots", "pose", "speech", "sync"} <= set(clip.stages) and clip.quality["max_people"] == 1
        assert clip.sync.backend == "lips" and clip.sync.verdict in ("pass", "unverified") and abs(clip.sync.offset_frames) <= 2
        seen += 1
    assert seen == len(rows)
    local = [r for r in rows if r.video_id == "local_zh"]
    first = ClipRecord.model_validate_json(members[local[0].key]["json"])
    assert first.licence == "CC-BY-4.0" and first.language == "zh"
    # the speech stage ran (source language from metadata) and each clip carries its slice
    assert "speech" in first.stages and first.transcript is not None and first.transcript.language == "zh"
    assert first.transcript.duration_s == pytest.approx(first.end_s - first.start_s)
    http_clips = [ClipRecord.model_validate_json(members[r.key]["json"]) for r in rows if r.video_id == "http_en"]
    words = [w for c in http_clips for s in c.transcript.segments for w in s.words]
    assert http_clips[0].transcript.language == "en" and len(words) >= 3
    # provenance from yt-dlp's info.json: where the video came from, as the platform states it
    prov = http_clips[0].provenance
    assert prov.webpage_url == f"{http_server}/en_b.mp4" and prov.extractor and prov.original_id == "en_b" and prov.title == "en_b"
    assert first.provenance.source_uri == str(media_dir / "zh_a.mp4") and first.source_media.width == 480
    assert all(0 <= w.start_s <= w.end_s <= c.end_s - c.start_s for c in http_clips for s in c.transcript.segments for w in s.words)

    # Re-running resumes from the ledger and changes nothing.
    manifest_before = (out / "manifest.jsonl").read_bytes()
    shard_mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    again = run_ingest(str(sources), str(out), load_config(None, FAST), echo=lambda m: None)
    assert again.stats.videos_resumed == 4
    assert (out / "manifest.jsonl").read_bytes() == manifest_before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == shard_mtimes


def test_shard_limits_split_samples(tmp_path, media_dir, ray_session):
    (tmp_path / "s.txt").write_text(f"{media_dir / 'zh_a.mp4'}\n{media_dir / 'en_b.mp4'}\n")
    # Output and work dir given as fsspec URIs (file://), the work dir outside the output folder.
    cfg = load_config(None, FILES_ONLY + ["shards.max_count=2", "shards.prefix=test", f"work_dir={(tmp_path / 'w').as_uri()}"])
    result = run_ingest(str(tmp_path / "s.txt"), (tmp_path / "run").as_uri(), cfg, echo=lambda m: None)
    assert (tmp_path / "w" / "ledger").is_dir() and not (tmp_path / "run" / "work").exists()
    shards = sorted(p.name for p in (tmp_path / "run" / "shards").glob("*.tar"))
    assert len(shards) == (len(result.manifest) + 1) // 2 and shards[0] == "test-000000.tar"
    assert all(sum(r.shard == s for r in result.manifest) <= 2 for s in shards)
    # Another clip window: the ledger entries of the clips stage no longer match and are redone,
    # the stages before it are reused, and the shards are rebuilt with the new clips.
    longer = cfg.model_copy(update={"clips": cfg.clips.model_copy(update={"window_s": 2.0})})
    again = run_ingest(str(tmp_path / "s.txt"), (tmp_path / "run").as_uri(), longer, echo=lambda m: None)
    assert again.stats.videos_resumed == 0 and "normalize" not in again.stats.stage_timings
    assert 0 < len(again.manifest) < len(result.manifest)
    assert all(r.duration_s == 2.0 for r in again.manifest)


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "cnas", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_resume_after_sigkill_gives_the_manifest_of_a_clean_run(tmp_path, media_dir, ray_session):
    # Eight videos (the two real ones under several ids) so the kill lands mid-run.
    lines = ["path,id"] + [f"{media_dir / ('zh_a.mp4' if i % 2 else 'en_b.mp4')},vid{i}" for i in range(8)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    args = ["ingest", "--sources", str(tmp_path / "s.csv"), "--num-cpus", "2", *sum((["--set", s] for s in FILES_ONLY), [])]
    args += ["--set", "clips.window_s=0.4"]

    # the run that is killed is a process of its own (SIGKILL); the resumed and the clean run are
    # `cnas ingest` in this process, on the session's Ray (tests/cli_helpers.py)
    killed = _cli([*args, "--out", str(tmp_path / "killed")])
    ledger = tmp_path / "killed" / "work" / "ledger"
    deadline = time.time() + 240
    while time.time() < deadline and not list(ledger.glob("*/clips.json")):
        assert killed.poll() is None, killed.stdout.read()
        time.sleep(0.05)
    done_before_kill = len(list(ledger.glob("*/clips.json")))
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 1 <= done_before_kill < 8, done_before_kill
    assert not (tmp_path / "killed" / "manifest.jsonl").exists()

    resumed = cnas(*args, "--out", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.output
    assert "SUMMARY ok=8 failed=0" in resumed.output
    stats = json.loads((tmp_path / "killed" / "stats.json").read_text())
    assert stats["videos_resumed"] >= done_before_kill

    clean = cnas(*args, "--out", tmp_path / "clean")
    assert clean.returncode == 0, clean.output
    resumed_manifest = (tmp_path / "killed" / "manifest.jsonl").read_text()
    assert resumed_manifest == (tmp_path / "clean" / "manifest.jsonl").read_text()
    keys = [json.loads(l)["key"] for l in resumed_manifest.splitlines()]
    assert len(keys) == len(set(keys))  # no duplicate
    per_video: dict[str, list[int]] = {}
    for k in keys:
        vid, _, idx = k.rpartition("-")
        per_video.setdefault(vid, []).append(int(idx))
    assert sorted(per_video) == [f"vid{i}" for i in range(8)]  # none missing
    assert all(idx == list(range(len(idx))) for idx in per_video.values())


def test_cli_exit_status_and_errors(tmp_path, media_dir, ray_session):
    # in process (the status `python -m cnas` exits with is main's return value); a real process's
    # status 3 is checked by tests/test_console.py, its status 1 by tests/test_security_pipeline.py
    (tmp_path / "s.txt").write_text(f"{media_dir / 'text.mp4'}\n")
    p = cnas("ingest", "--sources", tmp_path / "s.txt", "--out", tmp_path / "o", "--num-cpus", "1")
    assert p.returncode == 3, p.output
    assert "SUMMARY ok=0 failed=1" in p.output and "FAILED at normalize (unreadable" in p.output
    p = cnas("ingest", "--sources", tmp_path / "none.txt", "--out", tmp_path / "o2")
    assert p.returncode == 1 and "sources file not found" in p.output
    p = cnas("ingest", "--sources", tmp_path / "s.txt", "--out", tmp_path / "o3", "--set", "clips.window_s=0.01")
    assert p.returncode == 1 and "not a whole number of frames" in p.output
