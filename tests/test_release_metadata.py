"""Standard dataset metadata of a release (issue 19): the dataset card's YAML header as the Hugging
Face Hub reads it (``datasets.load_dataset(folder)`` goes through its configs) and ``croissant.json``
(``mlcroissant`` validates it and iterates the records), for a full and a metadata-only release."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.engine.config import load_config
from pipeline.release.croissant import CROISSANT, card_header, hf_licence, read_card_header
from pipeline.release.metadata import package_metadata_release
from pipeline.release.validate import validate_release

RATIOS = "release.split_ratios={train: 0.5, val: 0.25, test: 0.25}"


@pytest.fixture(scope="module")
def meta_release(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "cnas-1.0-meta"
    cfg = load_config(None, [RATIOS, 'release.licence="CC BY-NC 4.0"']).release
    stats = package_metadata_release(str(run_dir), "1.0", str(out), cfg)
    return out, stats


def _keys(out, split, name):
    return [json.loads(l)["key"] for l in (out / split / name).read_text().splitlines() if l.strip()]


def test_card_header_is_what_the_hub_reads(release, meta_release):
    out, stats = release
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    head = read_card_header(card)
    assert head["license"] == "other" and head["license_name"]  # the default licence is no Hub id
    assert head["language"] == ["zh"]  # the sources file says zh for every video
    assert head["size_categories"] == ["n<1K"] and "task_categories" in head and "tags" in head and head["pretty_name"] == "CNAS 1.0"
    (conf,) = head["configs"]
    assert conf["config_name"] == "default"
    assert {d["split"]: d["path"] for d in conf["data_files"]} == {n: f"{n}/*.tar" for n, s in stats["splits"].items() if s["clips"]}
    mout, mstats = meta_release
    mhead = read_card_header((mout / "README.md").read_text())
    assert mhead["license"] == "cc-by-nc-4.0" and "license_name" not in mhead
    assert {d["split"]: d["path"] for d in mhead["configs"][0]["data_files"]} == {n: f"{n}/clips.jsonl" for n in mstats["splits"]}
    assert hf_licence("CC-BY-4.0") == "cc-by-4.0" and hf_licence("apache 2.0") == "apache-2.0" and hf_licence("research only") is None
    # a split without clips is not listed (the Hub would fail on an empty glob)
    empty = {**stats, "splits": {**stats["splits"], "extra": {"clips": 0}}}
    assert "extra" not in card_header(empty, load_config(None, []).release, "1.0")


def test_load_dataset_through_the_card_configs(release, meta_release, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, stats = release
    for split, s in stats["splits"].items():
        if not s["clips"]:
            continue
        # no data_files / builder name: datasets reads the README's configs
        ds = datasets.load_dataset(str(out), split=split, cache_dir=str(out.parent / "hf-cache"))
        assert ds.num_rows == s["clips"]
        assert {"__key__", "json", "mp4", "wav"} <= set(ds.column_names)
        rows = ds.select_columns(["__key__", "json"])
        keys = _keys(out, split, "manifest.jsonl")
        assert [r["__key__"] for r in rows] == keys
        first = rows[0]["json"]
        assert first["key"] == keys[0] and set(first["members"]) == {"json", "mp4", "wav"}
    mout, mstats = meta_release
    for split, s in mstats["splits"].items():
        ds = datasets.load_dataset(str(mout), split=split, cache_dir=str(mout.parent / "hf-cache"))
        assert ds.num_rows == s["clips"]
        assert list(ds["key"]) == _keys(mout, split, "clips.jsonl")
        assert all(k == split for k in ds["split"]) and "clip" in ds.column_names


def test_croissant_validates_and_iterates(release, meta_release):
    import mlcroissant as mlc

    mout, mstats = meta_release
    ds = mlc.Dataset(jsonld=str(mout / CROISSANT))  # raises on validation errors
    assert ds.metadata.name == "CNAS-1.0-meta"
    for split, s in mstats["splits"].items():
        recs = list(ds.records(record_set=f"clips_{split}"))
        assert len(recs) == s["clips"]
        keys = [r[f"clips_{split}/key"] for r in recs]
        keys = [k.decode() if isinstance(k, bytes) else k for k in keys]
        assert keys == _keys(mout, split, "clips.jsonl")
        assert all(isinstance(r[f"clips_{split}/num_frames"], int) for r in recs)
        lines = [json.loads(l) for l in (mout / split / "clips.jsonl").read_text().splitlines()]
        assert [r[f"clips_{split}/source_uri"].decode() for r in recs] == [l["source"]["uri"] for l in lines]  # nested, by JSON path
        assert [r[f"clips_{split}/video_id"].decode() for r in recs] == [l["clip"]["video_id"] for l in lines]
        assert all(r[f"clips_{split}/transcript"] is None for r in recs)  # the run had no speech stage
    out, stats = release
    doc = json.loads((out / CROISSANT).read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.0" and doc["@type"] == "sc:Dataset"
    shards = [d for d in doc["distribution"] if d["@type"] == "cr:FileObject" and d["contentUrl"].endswith(".tar")]
    assert sorted(d["contentUrl"] for d in shards) == sorted(str(p.relative_to(out)) for p in out.glob("*/*.tar"))
    assert all(d["encodingFormat"] == "application/x-tar" and len(d["sha256"]) == 64 for d in shards)
    fds = mlc.Dataset(jsonld=str(out / CROISSANT))  # validates
    assert fds.metadata.ctx.issues.report() == "" and ds.metadata.ctx.issues.report() == ""  # no warnings either
    for split, s in stats["splits"].items():  # the samples, through each split's manifest.jsonl
        recs = list(fds.records(record_set=f"clips_{split}"))
        assert [r[f"clips_{split}/key"].decode() for r in recs] == _keys(out, split, "manifest.jsonl")
        assert {r[f"clips_{split}/shard"].decode() for r in recs} == {p.name for p in (out / split).glob("*.tar")}
    json_sets = [d for d in doc["distribution"] if d["@type"] == "cr:FileSet"]
    assert {d["includes"] for d in json_sets} == {"*.json"} and all(d["containedIn"] for d in json_sets)


def test_validate_checks_the_metadata(release, meta_release, tmp_path):
    out, _ = release
    sums = (out / "SHA256SUMS").read_text()
    assert "  croissant.json\n" in sums and "  README.md\n" in sums
    assert validate_release(str(meta_release[0])).ok
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / CROISSANT).write_text("{not json")
    card = (bad / "README.md").read_text().replace("train/*.tar", "training/*.tar", 1)
    (bad / "README.md").write_text(card)
    errors = validate_release(str(bad), check_media=False).errors
    assert any("croissant.json: does not parse" in e for e in errors), errors
    assert any("training/*.tar matches no file" in e for e in errors), errors
