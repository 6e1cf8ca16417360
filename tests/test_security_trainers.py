"""The trainers' side of untrusted input: shard indexes, shards and checkpoints from elsewhere must
not run code, read files outside the release, expand into huge members or go unverified.

Each attack test builds the hostile input, asserts it is refused with an error that names it, and
that nothing outside the test's own output changed (no marker file written by the attack).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_records import clip_json

from trainers.data import LoaderConfig, make_loader


def _write_shard(path: Path, keys: list[str], extra: dict[str, bytes] | None = None) -> Path:
    """A shard of json-only samples (the raw view's minimum), plus ``extra`` members on each."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for k in keys:
            members = ["json"] + sorted(extra or {})
            w.write({"__key__": k, "json": clip_json(k, 50, members), **(extra or {})})
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _index(release: Path, entries: list[dict]) -> Path:
    p = release / "train.index.json"
    p.write_text(json.dumps({"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "t", "shardlist": entries}))
    return p


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _keys(urls, **kw) -> list[str]:
    return [s["__key__"] for s in make_loader(LoaderConfig(urls=urls, view="raw", **kw))]


@pytest.fixture
def release(tmp_path) -> Path:
    """A release folder with one good shard (and its index entry fields)."""
    r = tmp_path / "release"
    _write_shard(r / "train" / "cnas-train-000000.tar", ["v00-0000", "v01-0000"])
    return r


def _good_entry(release: Path) -> dict:
    p = release / "train" / "cnas-train-000000.tar"
    return {"url": "train/cnas-train-000000.tar", "nsamples": 2, "filesize": p.stat().st_size, "sha256": _sha256(p)}


# ---------------------------------------------------------------------------------------------
# indexes and shard urls


@pytest.mark.parametrize("where", ["index", "config"])
def test_pipe_url_is_refused_and_never_run(release, tmp_path, where):
    marker = tmp_path / "PWNED"
    pipe = f"pipe:id > {marker}; true #://"
    urls = str(_index(release, [{"url": pipe, "nsamples": 1}, _good_entry(release)])) if where == "index" else [pipe]
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"(shardlist\[0\]|data url #0): shard url 'pipe:id .*scheme 'pipe'"):
        _keys(urls)
    assert not marker.exists()
    assert _files(tmp_path) == before


@pytest.mark.parametrize("form", ["dotdot", "absolute", "file_url"])
def test_index_url_outside_the_index_folder_is_refused(release, tmp_path, form):
    outside = _write_shard(tmp_path / "elsewhere" / "secret-000000.tar", ["s00-0000"])
    url = {"dotdot": "../elsewhere/secret-000000.tar", "absolute": str(outside), "file_url": outside.as_uri()}[form]
    index = _index(release, [_good_entry(release), {"url": url, "nsamples": 1}])
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"shardlist\[1\]: shard url .*secret-000000\.tar.* outside the index's folder"):
        _keys(str(index))
    assert _files(tmp_path) == before
    # a plain list of paths in the config is the user's own choice: no folder to stay in
    assert _keys([str(outside)]) == ["s00-0000"]


def test_symlinked_shard_escaping_the_index_folder_is_refused(release, tmp_path):
    outside = _write_shard(tmp_path / "elsewhere" / "secret-000000.tar", ["s00-0000"])
    (release / "train" / "cnas-train-000001.tar").symlink_to(outside)
    index = _index(release, [_good_entry(release), {"url": "train/cnas-train-000001.tar", "nsamples": 1}])
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"shardlist\[1\]: shard url 'train/cnas-train-000001\.tar' resolves to .*secret.*outside"):
        _keys(str(index))
    assert _files(tmp_path) == before
    # a symlink that stays inside the folder is fine
    (release / "train" / "cnas-train-000001.tar").unlink()
    (release / "train" / "cnas-train-000001.tar").symlink_to(release / "train" / "cnas-train-000000.tar")
    assert _keys(str(_index(release, [{"url": "train/cnas-train-000001.tar"}]))) == ["v00-0000", "v01-0000"]


def test_shard_checksum_mismatch_is_refused(release, tmp_path):
    entry = _good_entry(release)
    index = _index(release, [entry])
    assert _keys(str(index)) == ["v00-0000", "v01-0000"]  # the checksum holds
    shard = release / "train" / "cnas-train-000000.tar"
    data = shard.read_bytes()
    assert data.count(b"test://v01") == 1
    shard.write_bytes(data.replace(b"test://v01", b"evil://v01"))  # same size, still a valid tar and record
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"shard 'train/cnas-train-000000\.tar' .*sha256 [0-9a-f]{64} does not match the index's"):
        _keys(str(index))
    with pytest.raises(ValueError, match=r"shard 'train/cnas-train-000000\.tar' .*bytes, its index says 1"):
        _keys(str(_index(release, [{**entry, "filesize": 1}])))
    assert _files(tmp_path) == before


def test_http_shards_are_fetched_without_a_shell(release, tmp_path):
    """http(s) shards go to curl as one argv (no shell); their checksum is verified before reading."""
    import functools
    import http.server
    import threading

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (make setup installs it)")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(release)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        entry = _good_entry(release)
        remote = {**entry, "url": f"{base}/{entry['url']}"}
        assert _keys(str(_index(release, [remote]))) == ["v00-0000", "v01-0000"]
        with pytest.raises(ValueError, match="sha256 .* does not match"):
            _keys(str(_index(release, [{**remote, "sha256": "0" * 64}])))
        marker = tmp_path / "PWNED"
        with pytest.raises((OSError, ValueError)):
            _keys([f"{base}/x.tar;touch {marker};$(touch {marker})"])
        assert not marker.exists()
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# tar members


def _octal(n: int, width: int) -> bytes:
    return b"%0*o" % (width - 1, n) + b"\0"


def _member(name: str, data: bytes, type_: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), type_
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def _sparse_member(name: str, realsize: int, stored: bytes = b"RIFF0000") -> bytes:
    """An old-GNU sparse member (type 'S'): ``stored`` bytes at offset 0, holes up to ``realsize``."""
    header = bytearray(_member(name, stored, tarfile.GNUTYPE_SPARSE)[:512])
    header[386:410] = _octal(0, 12) + _octal(len(stored), 12)  # the first (offset, numbytes) pair
    header[482] = 0  # no extension headers
    header[483:495] = _octal(realsize, 12)  # the size once expanded
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + stored + b"\0" * (-len(stored) % 512)


def test_sparse_tar_member_is_refused_unexpanded(tmp_path):
    big = 200 * 2**20
    shard = tmp_path / "out" / "sparse-000000.tar"
    shard.parent.mkdir()
    shard.write_bytes(_member("v00-0000.json", clip_json("v00-0000", 50, ["json", "wav"]))
                      + _sparse_member("v00-0000.wav", big) + b"\0" * 1024)
    assert shard.stat().st_size < 10_000
    with tarfile.open(shard, "r|") as t:  # what a plain reader makes of it: a 200-MB member
        infos = [(m.name, m.size, m.issparse()) for m in t]
    assert infos[1] == ("v00-0000.wav", big, True)
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"sparse-000000\.tar: tar member 'v00-0000\.wav' is a sparse file"):
        _keys([str(shard)])
    assert _files(tmp_path) == before


def test_oversized_tar_member_is_refused_unread(tmp_path):
    shard = _write_shard(tmp_path / "out" / "big-000000.tar", ["v00-0000"], {"wav": bytes(2 * 2**20)})
    assert _keys([str(shard)], max_member_bytes=3 * 2**20) == ["v00-0000"]
    with pytest.raises(ValueError, match=r"big-000000\.tar: tar member 'v00-0000\.wav' is 2097152 bytes, over the loader's limit of 1048576"):
        _keys([str(shard)], max_member_bytes=2**20)
    # the trainers' data section sets it in MiB
    from trainers.facial.config import FacialConfig
    from trainers.facial.train import loader_config

    cfg = FacialConfig.model_validate({"data": {"urls": [str(shard)], "max_member_mb": 1}})
    assert loader_config(cfg).max_member_bytes == 2**20
    assert FacialConfig.model_validate({}).data.max_member_mb == 512


# ---------------------------------------------------------------------------------------------
# checkpoints


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if the pickle runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _local_session(storage: Path):
    from trainers.run_config import RunSection
    from trainers.session import LocalSession

    return LocalSession(RunSection(name="run", storage_path=str(storage), use_ray=False))


@pytest.mark.parametrize("loader", ["resume_model", "resume_rank", "facial_generate", "paha_generate", "facial_ablate",
                                    "facial_probe"])
def test_pickled_checkpoint_is_refused_without_running_it(tmp_path, loader):
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "storage" / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    evil = {"step": 1, "world_size": 1, "epoch": 0, "config": _Evil(marker)}
    if loader == "resume_rank":
        torch.save({"step": 1, "world_size": 1, "epoch": 0}, ckpt / "model.pt")
        torch.save({"position": {"epoch": 0, "batches": 0}, "rng": _Evil(marker)}, ckpt / "rank_0.pt")
        bad = ckpt / "rank_0.pt"
    elif loader == "facial_probe":
        torch.save({"state": {}, "report": _Evil(marker)}, ckpt / "probe.pt")
        bad = ckpt / "probe.pt"
    else:
        torch.save(evil, ckpt / "model.pt")
        bad = ckpt / "model.pt"
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=rf"{bad}: refused to load: .*pickled Python objects"):
        if loader in ("resume_model", "resume_rank"):
            from trainers.checkpoint import restore_checkpoint

            restore_checkpoint(_local_session(tmp_path / "storage"), {})
        elif loader == "facial_generate":
            from trainers.facial.generate import load_trained

            load_trained(ckpt)
        elif loader == "paha_generate":
            from trainers.paha.generate import load_checkpoint

            load_checkpoint(ckpt, "univdm")
        elif loader == "facial_ablate":
            from trainers.facial.evaluate import ablated_checkpoint

            ablated_checkpoint(ckpt, tmp_path / "ablated", "emotion")
        else:
            from trainers.facial.probe import load_probe

            load_probe(ckpt / "probe.pt")
    assert not marker.exists()
    assert _files(tmp_path) == before


def _draws() -> list:
    return [random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(3).tolist(),
            torch.rand(3).tolist(), torch.randn(2).tolist()]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    from trainers.checkpoint import restore_checkpoint, save_checkpoint, seed_everything

    seed_everything(5)
    random.gauss(0, 1)  # leave a cached Gaussian in Python's and NumPy's generators
    np.random.standard_normal(1)
    session = _local_session(tmp_path / "storage")
    save_checkpoint(session, 3, {"epoch": 2, "batches": 7}, {}, lambda: {"config": {"a": [1, 2.5, "x", True, None]}})
    expected = _draws()
    seed_everything(999)
    assert _draws() != expected
    step, position, state = restore_checkpoint(_local_session(tmp_path / "storage"), {})
    assert _draws() == expected
    assert (step, position, state["config"]) == (3, {"epoch": 2, "batches": 7}, {"a": [1, 2.5, "x", True, None]})
    ckpt = tmp_path / "storage" / "run" / "checkpoints" / "step_00000003"
    for name in ("model.pt", "rank_0.pt"):  # both load with a plain weights_only load
        torch.load(ckpt / name, weights_only=True)


def test_rank_file_of_an_older_checkpoint_still_resumes(tmp_path):
    """rank_<r>.pt files written before the RNG states were tensors hold NumPy arrays: they resume
    (NumPy arrays only are allowed for them), their RNG streams included."""
    from trainers.checkpoint import restore_checkpoint, seed_everything

    seed_everything(11)
    ckpt = tmp_path / "storage" / "run" / "checkpoints" / "step_00000002"
    ckpt.mkdir(parents=True)
    torch.save({"step": 2, "world_size": 1, "epoch": 0}, ckpt / "model.pt")
    torch.save({"position": {"epoch": 0, "batches": 2}, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                                               "torch": torch.get_rng_state()}}, ckpt / "rank_0.pt")
    expected = _draws()
    seed_everything(1)
    assert restore_checkpoint(_local_session(tmp_path / "storage"), {})[1] == {"epoch": 0, "batches": 2}
    assert _draws() == expected
