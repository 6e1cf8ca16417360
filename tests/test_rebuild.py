"""Metadata-only release and rebuild (issue 19): release a run over local sources without media,
delete the media, rebuild byte-identical members; a changed source is reported, not accepted; a
missing one is unavailable; a re-run resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import cnas
from pipeline.engine.config import load_config
from pipeline.release.rebuild import REPORT, SUMMARY, rebuild_release
from pipeline.release.validate import validate_release
from pipeline.engine.runner import run_ingest
from schemas import ManifestRow
from schemas.release import ClipSource, RebuildRecipe, RebuildResult

FILES_ONLY = ["clips.mode=fixed", "clips.window_s=1", "normalize.max_height=120", "shots.enabled=false",
              "pose.enabled=false", "speech.enabled=false", "curate.enabled=false", "shards.max_count=4"]


@pytest.fixture(scope="module")
def released(tmp_path_factory, media_dir, ray_session):
    d = tmp_path_factory.mktemp("rebuild")
    src = d / "sources"
    src.mkdir()
    for name, from_ in (("a.mp4", "zh_a.mp4"), ("b.mp4", "en_b.mp4"), ("c.mp4", "zh_a.mp4")):
        shutil.copy(media_dir / from_, src / name)
    rows = ["path,id,speaker,language", f"{src / 'a.mp4'},va,anchor1,zh", f"{src / 'b.mp4'},vb,anchor2,en", f"{src / 'c.mp4'},vc,anchor3,zh"]
    (d / "s.csv").write_text("\n".join(rows) + "\n")
    run_ingest(str(d / "s.csv"), str(d / "run"), load_config(None, FILES_ONLY), echo=lambda m: None)
    manifest = {r.key: r for r in (ManifestRow.model_validate_json(l) for l in (d / "run" / "manifest.jsonl").read_text().splitlines())}
    rel = d / "release"
    # through the CLI (in process: tests/cli_helpers.py)
    p = cnas("release", d / "run", "--version", "1.0", "--out", rel, "--metadata-only",
             "--set", "release.split_ratios={train: 0.34, val: 0.33, test: 0.33}")
    assert p.returncode == 0, p.output
    # the media is gone: the run's shards, clips and normalised media
    shutil.rmtree(d / "run")
    return d, src, rel, manifest


def _report(out: Path) -> dict[str, RebuildResult]:
    return {r.key: r for r in (RebuildResult.model_validate_json(l) for l in (out / REPORT).read_text().splitlines())}


def test_metadata_release_has_no_media_and_every_checksum(released):
    d, src, rel, manifest = released
    assert not list(rel.rglob("*.tar")) and not list(rel.rglob("*.mp4")) and not list(rel.rglob("*.wav"))
    recipe = RebuildRecipe.model_validate_json((rel / "rebuild.json").read_text())
    assert recipe.normalize["max_height"] == 120 and recipe.clips["encode_threads"] == 1
    clips = [ClipSource.model_validate_json(l) for s in recipe.splits for l in (rel / s / "clips.jsonl").read_text().splitlines()]
    assert {c.key for c in clips} == set(manifest)
    speakers = {s: {c.clip.source_metadata["speaker"] for c in clips if c.split == s} for s in recipe.splits}
    assert sum(len(v) for v in speakers.values()) == 3  # speaker-disjoint, as package_release
    for c in clips:
        assert c.member_sha256 == manifest[c.key].member_sha256
        assert c.source.uri == str(src / f"{c.source.video_id[1]}.mp4") and c.source.kind == "file"
        assert c.source_sha256 is not None and c.source_sha256 == _sha(src / f"{c.source.video_id[1]}.mp4")
        assert c.first_frame == round(c.clip.start_s * 25) and c.num_frames == c.clip.num_frames
        assert c.crop_box_source is not None and c.crop_box_source[2] > c.crop_box_source[0]
    card = (rel / "README.md").read_text()
    assert "metadata only" in card and "cnas rebuild" in card
    assert (rel / "schemas" / "clip_source.schema.json").exists() and (rel / "schemas" / "rebuild_result.schema.json").exists()
    rep = validate_release(str(rel))
    assert rep.ok, rep.errors
    assert rep.samples == len(manifest)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rebuild_identical_changed_unavailable_and_resume(released, tmp_path):
    d, src, rel, manifest = released
    # local sources are looked up in --source-dir only (a release's paths are never opened as they are); moved away: unavailable
    hidden = tmp_path / "hidden"
    shutil.move(str(src), str(hidden))
    out = tmp_path / "out"
    s = rebuild_release(str(rel), str(out), source_dir=str(src), echo=lambda m: None)
    assert s["unavailable"] == len(manifest) and s["rebuilt"] == 0
    assert all("source unavailable (not_found)" in r.reasons[0] for r in _report(out).values())
    # sources back: a re-run in the same folder rebuilds every clip, byte-identical
    shutil.move(str(hidden), str(src))
    s = rebuild_release(str(rel), str(out), source_dir=str(src), echo=lambda m: None)
    assert (s["rebuilt"], s["differs"], s["unavailable"]) == (len(manifest), 0, 0), _report(out)
    for key, r in _report(out).items():
        assert r.status == "rebuilt" and r.member_sha256 == manifest[key].member_sha256 and r.in_shards
    rows = [ManifestRow.model_validate_json(l) for sp in ("train", "val", "test") for l in (out / sp / "manifest.jsonl").read_text().splitlines()]
    assert {r.key: r.member_sha256 for r in rows} == {k: m.member_sha256 for k, m in manifest.items()}
    rep = validate_release(str(out))
    assert rep.ok, rep.errors
    assert rep.samples == len(manifest)
    assert json.loads((out / SUMMARY).read_text())["cut_this_run"] == len(manifest)
    # the card's header and croissant.json describe the rebuilt shards, not the clips.jsonl files
    from pipeline.release.croissant import read_card_header

    head = read_card_header((out / "README.md").read_text())
    assert {d["path"] for d in head["configs"][0]["data_files"]} == {f"{sp}/*.tar" for sp in ("train", "val", "test") if any((out / sp).glob("*.tar"))}
    urls = {d["contentUrl"] for d in json.loads((out / "croissant.json").read_text())["distribution"] if "contentUrl" in d}
    assert {str(p.relative_to(out)) for p in out.glob("*/*.tar")} <= urls and not any(u.endswith("clips.jsonl") for u in urls)
    # a third run redoes nothing
    s = rebuild_release(str(rel), str(out), source_dir=str(src), echo=lambda m: None)
    assert s["skipped_already_rebuilt"] == len(manifest) and s["cut_this_run"] == 0 and s["rebuilt"] == len(manifest)

    # a changed source is reported (naming the checksum) and not cut; a removed one is unavailable
    with open(src / "c.mp4", "ab") as f:
        f.write(b"\0" * 64)
    (src / "b.mp4").unlink()
    out2 = tmp_path / "out2"
    result = cnas("rebuild", rel, "--out", out2, "--source-dir", src)
    assert result.returncode == 3, result.stderr
    rep2 = _report(out2)
    by_video = {v: {r.status for r in rep2.values() if r.video_id == v} for v in ("va", "vb", "vc")}
    assert by_video == {"va": {"rebuilt"}, "vb": {"unavailable"}, "vc": {"differs"}}
    for r in rep2.values():
        if r.video_id == "vc":
            assert r.source_changed and not r.in_shards and r.source_sha256 == _sha(src / "c.mp4")
            assert "source changed: sha256" in r.reasons[0] and "not cut" in r.reasons[0]
    assert not any(r.key.startswith("vc-") for sp in ("train", "val", "test")
                   for r in (ManifestRow.model_validate_json(l) for l in (out2 / sp / "manifest.jsonl").read_text().splitlines()))
    # --accept-changed cuts it anyway and still reports it as differs
    s = rebuild_release(str(rel), str(out2), accept_changed=True, source_dir=str(src), echo=lambda m: None)
    vc = [r for r in _report(out2).values() if r.video_id == "vc"]
    assert all(r.status == "differs" and r.source_changed and r.in_shards for r in vc)
    assert s["skipped_already_rebuilt"] == sum(k.startswith("va-") for k in manifest)
