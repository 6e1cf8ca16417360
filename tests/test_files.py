"""Atomic writes (stages/files.py): the old content or the whole new one, never a torn file or a leftover."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stages.files import atomic_path, temp_name, write_bytes, write_npz


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_writes_replace_whole_files_and_make_folders(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    write_bytes(str(target), b"1", durable=True)
    write_bytes(str(target), b"22")
    assert target.read_bytes() == b"22" and os.listdir(target.parent) == ["x.json"]
    write_npz(str(tmp_path / "arr.npz"), {"x": np.arange(3)})
    with np.load(tmp_path / "arr.npz") as z:
        assert z["x"].tolist() == [0, 1, 2]


def test_temporary_names_differ_per_writer_and_keep_the_suffix(tmp_path):
    a, b = temp_name(str(tmp_path / "v.mp4"), ".mp4"), temp_name(str(tmp_path / "v.mp4"), ".mp4")
    assert a != b and a.endswith(".mp4") and os.path.dirname(a) == str(tmp_path)
