"""Untrusted releases (security issue: release/rebuild/validate). Each test is one attack on
`cnas rebuild` or `cnas validate` with a crafted release, shard or index; each asserts the attack is
refused with a clear error and that nothing outside the output changed. One ingest run (pose on, so
the clips list a pose.npz member) and its full and metadata-only releases are shared by the module."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import webdataset as wds

from cli_helpers import cnas  # `cnas rebuild` in process: these tests check its status, its error and the files
from pipeline.engine.config import load_config
from pipeline.release.rebuild import REPORT, SUMMARY, rebuild_release
from pipeline.release.files import iter_tar_samples
from pipeline.release.metadata import package_metadata_release
from pipeline.release.package import package_release
from pipeline.release.validate import validate_release
from pipeline.engine.runner import run_ingest
from schemas import ManifestRow
from schemas.release import RebuildResult
from stages.clips import ClipOptions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray Data's own config deprecations
RUN_SETTINGS = ["clips.mode=fixed", "clips.window_s=1", "normalize.max_height=120", "shots.enabled=false",
                "speech.enabled=false", "shards.max_count=4"]  # pose on: every clip lists a pose.npz member
RATIOS = "release.split_ratios={train: 0.5, val: 0.5}"


@pytest.fixture(scope="module")
def built(tmp_path_factory, media_dir, ray_session):
    d = tmp_path_factory.mktemp("security")
    src = d / "sources"
    src.mkdir()
    shutil.copy(media_dir / "zh_a.mp4", src / "a.mp4")
    shutil.copy(media_dir / "en_b.mp4", src / "b.mp4")
    (d / "s.csv").write_text(f"path,id,speaker,language\n{src / 'a.mp4'},va,anchor1,zh\n{src / 'b.mp4'},vb,anchor2,en\n")
    run_ingest(str(d / "s.csv"), str(d / "run"), load_config(None, RUN_SETTINGS), echo=lambda m: None)
    cfg = load_config(None, [RATIOS]).release
    package_release(str(d / "run"), "1.0", str(d / "full"), cfg)
    package_metadata_release(str(d / "run"), "1.0", str(d / "meta"), cfg)
    manifest = {r.key: r for r in (ManifestRow.model_validate_json(l) for l in (d / "run" / "manifest.jsonl").read_text().splitlines())}
    assert all("pose.npz" in r.member_sha256 for r in manifest.values())
    return SimpleNamespace(dir=d, src=src, full=d / "full", meta=d / "meta", manifest=manifest, run=d / "run")


# --- helpers -------------------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _victim(base: Path) -> Path:
    v = base / "victim"
    v.mkdir()
    (v / "keep.txt").write_text("the victim's own file\n")
    (v / "clips.jsonl").write_text("")  # what `<split>/clips.jsonl` of a split `../victim` reads
    return v


def _out_untouched(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*"))


def _recipe(rel: Path) -> dict:
    return json.loads((rel / "rebuild.json").read_text())


def _write_recipe(rel: Path, recipe: dict) -> None:
    (rel / "rebuild.json").write_text(json.dumps(recipe, indent=2) + "\n")


def _clip_lines(rel: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(l) for l in (rel / s / "clips.jsonl").read_text().splitlines() if l.strip()] for s in _recipe(rel)["splits"]}


def _write_clip_lines(rel: Path, lines: dict[str, list[dict]]) -> None:
    for split, rows in lines.items():
        (rel / split / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _report(out: Path) -> dict[str, RebuildResult]:
    return {r.key: r for r in (RebuildResult.model_validate_json(l) for l in (out / REPORT).read_text().splitlines())}


def _rebuild_error(rel: Path, out: Path, src: Path) -> str:
    """The error message of rebuilding ``rel`` into ``out`` ('' when it did not fail)."""
    try:
        rebuild_release(str(rel), str(out), source_dir=str(src), echo=lambda m: None)
    except ValueError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 -- the old code failed later, after the damage
        return f"{type(e).__name__}: {e}"
    return ""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rewrite_first_shard(rel: Path, change) -> tuple[str, str]:
    """Rewrite the first shard of the release's first split, ``change(members)`` on its first sample; (url, key)."""
    shard = sorted(rel.glob("*/*.tar"))[0]
    samples = list(iter_tar_samples(str(shard)))
    change(samples[0][1])
    with wds.TarWriter(str(shard)) as w:
        for key, members in samples:
            w.write({"__key__": key, **members})
    return f"{shard.parent.name}/{shard.name}", samples[0][0]


def _sparse_tar(folder: Path, name: str, size: int, fmt: str = "gnu") -> Path:
    """A tar of a few KB holding one sparse member of ``size`` bytes (GNU tar -S)."""
    folder.mkdir(parents=True, exist_ok=True)
    member = folder / name
    with open(member, "wb") as f:
        f.write(b"\x93NUMPY")
        f.truncate(size)
    tar = folder / f"sparse-{fmt}.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(tar), "-C", str(folder), name], check=True)
    member.unlink()
    assert tar.stat().st_size < 64 * 1024
    return tar


# --- rebuild: the release's names and files -------------------------------------------------------

def test_split_named_dotdot_victim_is_refused(built, tmp_path):
    """Finding 1: a split `../victim` made `cnas rebuild` run rmtree(OUT/../victim), and validate said OK."""
    rel = tmp_path / "rel"
    shutil.copytree(built.meta, rel)
    recipe = _recipe(rel)
    recipe["splits"] = ["../victim"]
    _write_recipe(rel, recipe)
    victim, out = _victim(tmp_path), tmp_path / "out"
    out.mkdir()  # as after an earlier run
    before = _snapshot(victim)
    error = _rebuild_error(rel, out, built.src)
    assert _snapshot(victim) == before, "the victim folder next to OUT changed"
    assert "split '../victim' is not a safe name" in error and _out_untouched(out)
    p = cnas("rebuild", rel, "--out", out, "--source-dir", built.src)
    assert p.returncode == 1 and "not a safe name" in p.stderr, (p.returncode, p.stderr[-2000:])
    assert _snapshot(victim) == before and _out_untouched(out)
    rep = validate_release(str(rel), check_media=False)
    assert not rep.ok and any("rebuild.json" in e and "../victim" in e for e in rep.errors), rep.errors
    # a clip line naming such a split, and a split name with a slash, are refused the same way
    from schemas.release import ClipSource, RebuildRecipe

    line = _clip_lines(built.meta)["train"][0]
    with pytest.raises(ValueError, match="not a safe name"):
        ClipSource.model_validate({**line, "split": "../victim"})
    with pytest.raises(ValueError, match="not a safe name"):
        RebuildRecipe.model_validate({**_recipe(built.meta), "splits": ["train/../../victim"]})


def test_release_with_relative_symlinks_is_refused(built, tmp_path):
    """Finding 1: symlinks in a release (one leaving it, one in-tree that PEP 706's data filter lets
    through) are refused by rebuild before anything is written, and reported by validate."""
    rel = tmp_path / "rel"
    shutil.copytree(built.meta, rel)
    victim, out = _victim(tmp_path), tmp_path / "out"
    before = _snapshot(victim)
    shutil.rmtree(rel / "schemas")
    os.symlink("../victim", rel / "schemas")  # leaves the release
    (rel / "val" / "clips.jsonl").unlink()
    os.symlink("../train/clips.jsonl", rel / "val" / "clips.jsonl")  # in-tree
    error = _rebuild_error(rel, out, built.src)
    assert _snapshot(victim) == before and not list(out.rglob("keep.txt")), "the victim changed or was copied into OUT"
    assert "schemas: a symbolic link" in error and _out_untouched(out)
    rep = validate_release(str(rel), check_media=False)
    assert any(e.startswith("schemas: a symbolic link") for e in rep.errors), rep.errors
    assert any(e.startswith("val/clips.jsonl: a symbolic link") for e in rep.errors), rep.errors


def test_recipe_runtime_and_safety_settings_are_the_consumers(built, tmp_path, monkeypatch):
    """Finding 2: cookies_file, allow_file_urls, max_filesize_mb: null, timeouts and retries of a
    release's rebuild.json are ignored; the consumer's config (or the defaults) decides them."""
    import pipeline.release.rebuild as rb
    from stages.errors import StageError

    rel = tmp_path / "rel"
    shutil.copytree(built.meta, rel)
    recipe = _recipe(rel)
    recipe["download"].update(cookies_file="/root/.config/victim-cookies.txt", allow_file_urls=True, max_filesize_mb=None,
                              socket_timeout_s=1e9, retries=1000, rate_limit="1", max_height=720)
    recipe["normalize"]["timeout_s"] = 1e9
    recipe["clips"]["timeout_s"] = 1e9
    _write_recipe(rel, recipe)
    seen = {}

    def spy_download(item, dest, opts, *a, **kw):
        seen["download"] = opts
        return real_download(item, dest, opts, *a, **kw)

    def spy_normalize(video_id, path, out, opts, **kw):
        seen["normalize"] = opts
        raise StageError("test_stop", "stopped by the test after the options were seen")

    real_download = rb.download
    monkeypatch.setattr(rb, "download", spy_download)
    monkeypatch.setattr(rb, "normalize", spy_normalize)
    # no consumer config: the defaults, never the release's values
    summary = rebuild_release(str(rel), str(tmp_path / "out"), source_dir=str(built.src), echo=lambda m: None)
    dl, norm = seen["download"], seen["normalize"]
    assert (dl.cookies_file, dl.allow_file_urls, dl.max_filesize_mb, dl.socket_timeout_s, dl.retries, dl.rate_limit) == \
        (None, False, 4096, 30.0, 3, None)
    assert dl.max_height == 720  # output-affecting: the release's
    assert norm.timeout_s == 3600.0 and norm.max_height == 120
    assert summary["unavailable"] == summary["clips"]
    assert {"download.cookies_file", "download.allow_file_urls", "download.max_filesize_mb", "normalize.timeout_s",
            "clips.timeout_s"} <= set(summary["recipe_settings_not_used"])
    # the consumer's config decides them
    consumer = load_config(None, ["download.socket_timeout_s=7", "normalize.timeout_s=99"])
    rebuild_release(str(rel), str(tmp_path / "out1"), source_dir=str(built.src), consumer=consumer, echo=lambda m: None)
    assert seen["download"].socket_timeout_s == 7.0 and seen["download"].cookies_file is None and seen["normalize"].timeout_s == 99
    # the clip options, and allow_file_urls only when the consumer sets it
    _, clips, dl2, _ = rb.effective_options(rb.read_release(str(rel))[0], load_config(None, ["download.allow_file_urls=true"]))
    assert clips.timeout_s == 600.0 and clips.window_s == 1.0 and dl2.allow_file_urls is True and dl2.cookies_file is None
    assert clips.keyframe_every_s == ClipOptions().keyframe_every_s  # written by this version: its value
    # a recipe from before clips.keyframe_every_s existed is cut as it was then (x264's default GOP)
    old = {**recipe, "clips": {k: v for k, v in recipe["clips"].items() if k != "keyframe_every_s"}}
    _write_recipe(rel, old)
    assert rb.effective_options(rb.read_release(str(rel))[0])[1].keyframe_every_s is None
    # unknown settings or a preset that is no x264 preset: refused
    _write_recipe(rel, {**recipe, "clips": {**recipe["clips"], "preset": "veryfast -i /etc/passwd"}})
    with pytest.raises(ValueError, match="not an x264 preset"):
        rebuild_release(str(rel), str(tmp_path / "out2"), source_dir=str(built.src), echo=lambda m: None)
    # the CLI takes runtime settings only
    p = cnas("rebuild", rel, "--out", tmp_path / "out3", "--set", "clips.crf=30")
    assert p.returncode == 2 and "runtime and safety settings" in p.stderr


def test_local_source_needs_source_dir_and_stays_inside_it(built, tmp_path):
    """Finding 2: a kind=file source is never opened at the path the release names; it needs
    --source-dir and must resolve inside it."""
    rel = tmp_path / "rel"
    shutil.copytree(built.meta, rel)
    out = tmp_path / "out"
    summary = rebuild_release(str(rel), str(out), echo=lambda m: None)  # the recorded absolute paths exist, yet
    report = _report(out)
    assert summary["unavailable"] == summary["clips"] and summary["rebuilt"] == 0
    assert all(r.status == "unavailable" and "needs_source_dir" in r.reasons[0] for r in report.values())
    assert not list(out.glob("*/*.tar"))
    # a relative path that leaves --source-dir (a copy of the source sits there): refused
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copy(built.src / "a.mp4", victim / "a.mp4")
    lines = _clip_lines(rel)
    for rows in lines.values():
        for r in rows:
            r["source"]["uri"] = "../victim/a.mp4"
    _write_clip_lines(rel, lines)
    out2 = tmp_path / "out2"
    summary = rebuild_release(str(rel), str(out2), source_dir=str(built.src), echo=lambda m: None)
    assert summary["unavailable"] == summary["clips"]
    assert all("outside_source_dir" in r.reasons[0] for r in _report(out2).values())


def test_clip_without_hashes_is_unverified(built, tmp_path):
    """Finding 2: a clip whose release records no member checksums was reported `rebuilt`."""
    rel = tmp_path / "rel"
    shutil.copytree(built.meta, rel)
    lines = _clip_lines(rel)
    for split, rows in lines.items():  # one video only (faster); no checksums for any member
        lines[split] = [{**r, "member_sha256": {}, "member_bytes": {}} for r in rows if r["source"]["video_id"] == "va"]
    _write_clip_lines(rel, lines)
    out = tmp_path / "out"
    summary = rebuild_release(str(rel), str(out), source_dir=str(built.src), echo=lambda m: None)
    report = _report(out)
    assert report and summary["rebuilt"] == 0 and summary["unverified"] == len(report)
    assert all(r.status == "unverified" and any("no sha256 for json, mp4, wav" in x for x in r.reasons) for r in report.values())


# --- shards: tar members --------------------------------------------------------------------------

def test_sparse_and_oversized_tar_members_are_refused(built, tmp_path):
    """Finding 3: a 10-KB sparse tar became a 128-MB member; members had no size cap."""
    key = next(iter(built.manifest))
    for fmt in ("gnu", "posix"):
        tar = _sparse_tar(tmp_path / fmt, f"{key}.pose.npz", 128 * 2**20, fmt)
        with pytest.raises(tarfile.TarError, match="sparse"):
            list(iter_tar_samples(str(tar)))
    # in a release: validate refuses the shard, rebuild refuses the arrays tar before writing anything
    full = tmp_path / "full"
    shutil.copytree(built.full, full)
    shard = sorted(full.glob("train/*.tar"))[0]
    shutil.copy(tar, shard)
    rep = validate_release(str(full), check_media=False)
    assert any(e.startswith(f"train/{shard.name}: refused") and "sparse" in e for e in rep.errors), rep.errors
    rel = tmp_path / "rel"
    shutil.copytree(built.meta, rel)
    recipe = _recipe(rel)
    _write_recipe(rel, {**recipe, "with_arrays": True})
    train_key = _clip_lines(rel)["train"][0]["key"]
    arrays = _sparse_tar(tmp_path / "arr", f"{train_key}.pose.npz", 128 * 2**20)
    (rel / "train" / "arrays").mkdir()
    shutil.copy(arrays, rel / "train" / "arrays" / "cnas-train-arrays-000000.tar")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="sparse"):
        rebuild_release(str(rel), str(out), source_dir=str(built.src), echo=lambda m: None)
    assert _out_untouched(out)
    # a member over the cap (configurable): refused before it is read
    big = tmp_path / "big.tar"
    with wds.TarWriter(str(big)) as w:
        w.write({"__key__": key, "json": b"{}", "mp4": b"\0" * 64 * 1024})
    with pytest.raises(tarfile.TarError, match="over the 16384-byte member cap"):
        list(iter_tar_samples(str(big), max_member_bytes=16 * 1024))
    rep = validate_release(str(built.full), check_media=False, max_member_bytes=16 * 1024)
    assert any("over the 16384-byte member cap" in e for e in rep.errors), rep.errors
    # link members and names with a folder or '..' are refused, not skipped
    for name, kind in ((f"{key}.mp4", tarfile.SYMTYPE), (f"../{key}.mp4", tarfile.REGTYPE), (f"{key}.mp4", tarfile.CHRTYPE)):
        odd = tmp_path / "odd.tar"
        with tarfile.open(odd, "w") as t:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            t.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        with pytest.raises(tarfile.TarError, match="member"):
            list(iter_tar_samples(str(odd)))


# --- validate ---------------------------------------------------------------------------------------

def _bad_wav(members):
    members["wav"] = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 40


def _object_npz(members):
    buf = io.BytesIO()
    np.savez(buf, part_confidences=np.array([{"x": 1}, None], dtype=object))
    members["pose.npz"] = buf.getvalue()


@pytest.fixture(scope="module")
def hanging_server():
    """A TCP port that accepts connections and never answers (a live stream that never ends)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.timeout(60)  # the old code hung here for good
@pytest.mark.parametrize("attack", ["bad_wav", "object_npz", "hls_mp4"])
def test_validate_reports_a_bad_member_without_crashing_or_hanging(built, tmp_path, attack, hanging_server):
    """Finding 4: validate crashed on a bad wav or an object npz and hung on an HLS playlist as mp4."""
    full = tmp_path / "full"
    shutil.copytree(built.full, full)
    hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:{hanging_server}/live0.ts\n".encode()
    change = {"bad_wav": _bad_wav, "object_npz": _object_npz, "hls_mp4": lambda m: m.__setitem__("mp4", hls)}[attack]
    url, key = _rewrite_first_shard(full, change)
    rep = validate_release(str(full), check_media=True)
    assert not rep.ok and rep.samples == len(built.manifest)  # every sample was still checked
    member = {"bad_wav": "wav", "object_npz": "pose.npz", "hls_mp4": "mp4"}[attack]
    what = {"bad_wav": "unreadable", "object_npz": "Python objects (pickle); refused", "hls_mp4": "not an MP4 file"}[attack]
    assert any(e.startswith(f"{url}:{key}: {member}:") and what in e for e in rep.errors), rep.errors


def test_validate_reads_nothing_outside_the_release(built, tmp_path):
    """Finding 4: SHA256SUMS (and croissant.json, shard indices) naming /etc/hostname, ../../etc/passwd,
    a file beside the release or a link to a device were read; validate said OK."""
    full = tmp_path / "full"
    shutil.copytree(built.full, full)
    secret = tmp_path / "secret.txt"
    secret.write_text("the consumer's secret\n")
    os.symlink("/dev/null", full / "zero")
    os.mkfifo(full / "pipe")
    passwd = "../" * 16 + "etc/passwd"
    listed = [("/etc/hostname", Path("/etc/hostname").read_bytes()), (passwd, Path("/etc/passwd").read_bytes()),
              ("../secret.txt", secret.read_bytes()), ("zero", b"")]
    with open(full / "SHA256SUMS", "a") as f:
        f.writelines(f"{_sha(data)}  {name}\n" for name, data in listed)
    croissant = json.loads((full / "croissant.json").read_text())
    croissant["distribution"].append({"@type": "cr:FileObject", "@id": "leak", "name": "leak", "contentUrl": "../secret.txt",
                                      "encodingFormat": "text/plain", "sha256": _sha(secret.read_bytes())})
    (full / "croissant.json").write_text(json.dumps(croissant))
    shard = sorted(full.glob("train/*.tar"))[0]
    shutil.copy(shard, tmp_path / "outside.tar")
    index = json.loads((full / "train.index.json").read_text())
    index["shardlist"].append({**index["shardlist"][0], "url": "train/../../outside.tar"})
    (full / "train.index.json").write_text(json.dumps(index))
    rep = validate_release(str(full), check_media=False)
    errors = "\n".join(rep.errors)
    assert not rep.ok
    for name, _ in listed:
        assert f"{name!r} refused, not read" in errors, (name, errors)
    assert "zero: a symbolic link (-> /dev/null)" in errors and "pipe: a fifo" in errors
    assert "croissant.json: '../secret.txt' refused, not read" in errors
    assert "shard url 'train/../../outside.tar' is not train/<shard>.tar" in errors
    assert secret.read_text() == "the consumer's secret\n"


# --- a rebuilt release validates; publishing is one rename --------------------------------------------

def test_metadata_only_rebuild_without_arrays_validates(built, tmp_path):
    """Finding 6: rebuilt without --with-arrays, the json still listed pose.npz and validate failed."""
    out = tmp_path / "out"
    summary = rebuild_release(str(built.meta), str(out), source_dir=str(built.src), echo=lambda m: None)
    assert summary["rebuilt"] == summary["clips"] == len(built.manifest), _report(out)
    full_rows = {}
    for m in built.full.glob("*/manifest.jsonl"):
        for line in m.read_text().splitlines():
            r = ManifestRow.model_validate_json(line)
            full_rows[r.key] = r
    for key, r in _report(out).items():
        assert r.missing_members == ["pose.npz"] and r.in_shards
        assert {k: r.member_sha256[k] for k in ("mp4", "wav")} == {k: full_rows[key].member_sha256[k] for k in ("mp4", "wav")}
    for shard in out.glob("*/*.tar"):
        for key, members in iter_tar_samples(str(shard)):
            record = json.loads(members["json"])
            assert record["members"] == ["json", "mp4", "wav"]
    rep = validate_release(str(out))
    assert rep.ok, rep.errors
    assert rep.samples == len(built.manifest)
    assert json.loads((out / SUMMARY).read_text())["unverified"] == 0


def test_release_is_published_with_one_rename(built, tmp_path, monkeypatch):
    """Finding 5: a crash while moving files one by one left half a release."""
    import pipeline.release.package as rel_mod

    renames = []
    real_replace = os.replace

    def spy_replace(a, b):
        renames.append((str(a), str(b)))
        return real_replace(a, b)

    def no_move(*a, **kw):
        raise AssertionError("files moved one by one")

    monkeypatch.setattr(rel_mod.os, "replace", spy_replace)
    monkeypatch.setattr(rel_mod.shutil, "move", no_move)
    out = tmp_path / "deeper" / "rel"
    package_release(str(built.run), "1.0", str(out), load_config(None, [RATIOS]).release)
    assert [b for _, b in renames] == [str(out)] and Path(renames[0][0]).parent == out.parent
    assert (out / "SHA256SUMS").exists() and validate_release(str(out), check_media=False).ok
    assert os.stat(out).st_mode & 0o777 != 0o700 and os.listdir(out.parent) == ["rel"]  # no staging left behind
    # a failure before publishing leaves nothing at OUT and no staging folder
    monkeypatch.setattr(rel_mod, "write_croissant", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("crash")))
    out2 = tmp_path / "crash" / "rel"
    with pytest.raises(RuntimeError, match="crash"):
        package_release(str(built.run), "1.0", str(out2), load_config(None, [RATIOS]).release)
    assert not out2.exists() and os.listdir(out2.parent) == []
