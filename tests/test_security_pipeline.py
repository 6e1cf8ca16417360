"""Shared state and the low findings of the security review (docs/security.md): one writer per
output folder, an identity registry that re-assigning leaves alone, shards staged beside the
output rather than in the system TMPDIR, transcript words that are text (not mathtext), and a NUL
in a sources file named by its line."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from schemas import IdentityRegistry, TrackEmbedding
from stages.identity import assign_identities

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hold_lock(folder: str, ready, release) -> None:
    from pipeline.engine.lock import output_lock

    with output_lock(folder, "cnas ingest"):
        ready.set()
        release.wait(60)


def test_a_second_run_into_a_locked_output_stops_and_changes_nothing(tmp_path):
    from pipeline.engine.lock import LOCK_FILE, output_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.jsonl").write_text("kept\n")
    sources = tmp_path / "sources.txt"
    sources.write_text(str(tmp_path / "missing.mp4") + "\n")
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        before = sorted(os.listdir(out))
        proc = subprocess.run([sys.executable, "-m", "cnas", "ingest", "--sources", str(sources), "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert "in use by another run" in proc.stderr + proc.stdout and f"pid {holder.pid}" in proc.stderr + proc.stdout
        assert sorted(os.listdir(out)) == before  # no config.yaml, no work dir: it stopped before writing
        assert (out / "manifest.jsonl").read_text() == "kept\n"
    finally:
        release.set()
        holder.join(30)
    # the holder is gone: the kernel dropped its lock, and the folder can be locked again
    with output_lock(str(out)) as path:
        assert os.path.basename(path) == LOCK_FILE


def test_the_holder_may_nest_the_lock_and_another_process_may_not(tmp_path):
    from pipeline.engine.lock import output_lock

    with output_lock(str(tmp_path), "first"):
        with output_lock(str(tmp_path), "nested"):  # the CLI, then run_ingest
            pass
        code = ("import sys; from pipeline.engine.lock import output_lock\n"
                "try:\n    output_lock(sys.argv[1]).__enter__()\nexcept ValueError as e:\n    print(e); sys.exit(3)")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and f"in use by another run (first, pid {os.getpid()}" in proc.stdout
    with output_lock(str(tmp_path), "after"):  # released when the outer block ended
        pass


def _track(seed: int, frames: int = 20) -> TrackEmbedding:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=128)
    return TrackEmbedding(track=0, frames=frames, spread=0.1, embedding=[float(x) for x in 0.2 * v / np.linalg.norm(v)])


def test_assigning_the_same_tracks_again_leaves_the_registry_as_it_was():
    tracks = {("a", 0): _track(1), ("b", 0): _track(1, 30), ("c", 0): _track(2)}
    first, reg1 = assign_identities(tracks, IdentityRegistry(), 0.45)
    again, reg2 = assign_identities(tracks, reg1, 0.45)
    assert again == first
    assert reg2 == reg1  # counts do not double, centroids do not move
    assert sum(i.count for i in reg1.identities) == 70
    assert sorted(t for i in reg1.identities for t in i.tracks) == ["a#0", "b#0", "c#0"]
    # a new video still joins its person's identity and counts once
    more, reg3 = assign_identities({**tracks, ("d", 0): _track(2, 5)}, reg2, 0.45)
    assert more[("d", 0)][0] == first[("c", 0)][0]
    assert sum(i.count for i in reg3.identities) == 75


def test_shards_are_staged_beside_the_output_not_in_tmpdir(tmp_path, monkeypatch):
    from pipeline.engine.sink import write_shards
    from pipeline.engine.workdir import WorkDir
    from clip_records import clip_json
    from schemas import ClipRecord
    from schemas import shard as layout

    import tempfile

    def no_system_tmp(*a, **k):
        raise AssertionError("a local output's shards went through the system TMPDIR")

    monkeypatch.setattr(tempfile, "mkdtemp", no_system_tmp)
    work, out = WorkDir(str(tmp_path / "work")), WorkDir(str(tmp_path / "out"))
    clips = []
    for i in range(3):
        clip = ClipRecord.model_validate_json(clip_json(f"vid-{i:04d}", 25, ["json", "wav"]))
        work.write_text("RIFF" + "x" * 100 * (i + 1), *layout.clip_member_parts(clip.video_id, clip.key, "wav"))
        clips.append(clip)
    rows, rewritten = write_shards(clips, work, out, 2, 10, "cnas")
    assert rewritten and len(rows) == 3 and sorted(os.listdir(out.path("shards"))) == ["cnas-000000.tar", "cnas-000001.tar"]
    assert not os.path.exists(out.path("shards.new")) and not os.path.exists(out.path("shards.old"))


def test_a_dollar_word_in_a_transcript_draws_as_text(tmp_path):
    from pipeline.inspect.sheets import SheetData, draw_sheet

    frame = np.full((64, 64, 3), 128, np.uint8)
    data = SheetData(title="clip $x^$ \\frac", facts=["$"], frames=[frame, frame], times=[0.0, 0.5], duration_s=1.0,
                     words=[(0.0, 0.4, "$\\frac{a}{"), (0.5, 0.9, "$5 $6")])
    path = draw_sheet(data, str(tmp_path / "sheet.png"))
    assert os.path.getsize(path) > 1000


def test_a_nul_in_a_sources_file_is_named_with_its_line(tmp_path):
    from pipeline.engine.sources import read_sources

    src = tmp_path / "sources.txt"
    src.write_bytes(b"/data/a.mp4\n/data/b\x00.mp4\n")
    with pytest.raises(ValueError, match=r"sources.txt:2: uri holds a control character \(U\+0000\)"):
        read_sources(src)
