"""The training loader: node/worker splitting, epochs, deterministic shuffling, resume, views, HF datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import webdataset as wds
from clip_records import clip_json

from trainers.data import LoaderConfig, make_loader


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    """10 samples in 5 shards (json only: enough for the raw view)."""
    d = tmp_path_factory.mktemp("toy")
    with wds.ShardWriter(str(d / "toy-%06d.tar"), maxcount=2, verbose=0) as w:
        for i in range(10):
            w.write({"__key__": f"v{i:02d}-0000", "json": clip_json(f"v{i:02d}-0000", 50, ["json"])})
    return sorted(str(p) for p in d.glob("*.tar"))


def _keys(cfg, monkeypatch, rank, world, **kw):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    return [s["__key__"] for s in make_loader(cfg, **kw)]


def test_two_nodes_two_workers_see_every_sample_once(toy_shards, monkeypatch):
    cfg = LoaderConfig(urls=toy_shards, view="raw", num_workers=2)
    seen = _keys(cfg, monkeypatch, 0, 2) + _keys(cfg, monkeypatch, 1, 2)
    assert sorted(seen) == [f"v{i:02d}-0000" for i in range(10)]


def test_fixed_epoch_length_and_deterministic_shuffle_and_resume(toy_shards, monkeypatch):
    fixed = LoaderConfig(urls=toy_shards, view="raw", num_workers=2, epoch_samples=3)
    assert len(_keys(fixed, monkeypatch, 0, 2)) == 6 and len(_keys(fixed, monkeypatch, 1, 2)) == 6  # 3 per worker
    cfg = LoaderConfig(urls=toy_shards, view="raw", num_workers=2, shuffle_buffer=10, shuffle_shards=True, seed=7)
    a = _keys(cfg, monkeypatch, 0, 1, epoch=0)
    assert a == _keys(cfg, monkeypatch, 0, 1, epoch=0) and sorted(a) == sorted(set(a)) and len(a) == 10
    assert a != _keys(cfg, monkeypatch, 0, 1, epoch=1)  # a new epoch, a new order
    assert _keys(cfg, monkeypatch, 0, 1, epoch=0, skip=4) == a[4:]  # resume mid-epoch


def test_a_sample_off_the_clip_contract_fails_naming_it(tmp_path):
    shard = str(tmp_path / "bad-000000.tar")
    with wds.TarWriter(shard) as w:
        w.write({"__key__": "v00-0000", "json": clip_json("v00-0000", 50, ["json"])})
        w.write({"__key__": "v01-0000", "json": json.dumps({"num_frames": 50, "fps": 25}).encode()})
    with pytest.raises(ValueError, match=r"sample 'v01-0000' of .*bad-000000\.tar: .*clip record.*\n.*key"):
        list(make_loader(LoaderConfig(urls=[shard], view="raw")))


def test_a_flame_npz_off_the_contract_fails_naming_it(tmp_path):
    import io

    import numpy as np
    import soundfile as sf

    wav = io.BytesIO()
    sf.write(wav, np.zeros(32000, np.float32), 16000, format="WAV", subtype="PCM_16")
    npz = io.BytesIO()
    np.savez(npz, shape=np.zeros(100), exp=np.zeros((50, 50)), pose=np.zeros((50, 6)), valid=np.ones(50, bool))  # no cam
    shard = str(tmp_path / "flame-000000.tar")
    with wds.TarWriter(shard) as w:
        w.write({"__key__": "v00-0000", "json": clip_json("v00-0000", 50, ["json", "wav", "flame.npz"]), "wav": wav.getvalue(),
                 "flame.npz": npz.getvalue()})
    with pytest.raises(ValueError, match=r"v00-0000: flame.npz does not match schemas.FlameFit: flame.npz lacks \['cam'\]"):
        list(make_loader(LoaderConfig(urls=[shard], view="facial", window_frames=25)))


def test_facial_and_paha_views(view_shards):
    facial = next(iter(make_loader(LoaderConfig(urls=view_shards, view="facial", window_frames=25))))
    assert facial["motion"].shape == (25, 53) and facial["audio"].shape == (16000,) and facial["valid"].dtype == torch.bool
    assert facial["emotion_label"] == 1 and facial["emotion_intensity"] == 2 and facial["emotion_text"] == "a clearly happy face"
    paha = next(iter(make_loader(LoaderConfig(urls=view_shards, view="paha", window_frames=10, image_size=64))))
    assert paha["video"].shape == (10, 3, 64, 64) and paha["reference"].shape == (3, 64, 64)
    # the reference frame is never inside the window (no PSNR/SSIM leak), over windows of several seeds
    for seed in range(4):
        ex = next(iter(make_loader(LoaderConfig(urls=view_shards, view="paha", window_frames=10, image_size=32, seed=seed))))
        first, last = int(ex["frame_index"].min()), int(ex["frame_index"].max())
        assert not first <= ex["reference_frame"] <= last, (seed, first, last, ex["reference_frame"])
    assert 0 <= paha["video"].min() and paha["video"].max() <= 1
    assert paha["part_confidences"].shape == (10, 5) and paha["part_masks"].shape == (10, 5, 64, 64)
    face_mask = paha["part_masks"][:, 0]
    assert face_mask.sum() > 0 and torch.all(face_mask.sum(dim=(1, 2)) > 0) == bool(paha["part_present"][:, 0].all())
    assert paha["audio"].shape == (6400,)
    batch = next(iter(make_loader(LoaderConfig(urls=view_shards, view="facial", window_frames=25, batch_size=1))))
    assert batch["motion"].shape == (1, 25, 53)
    # resampling: 12.5 fps windows from 25 fps clips take every other frame; audio at 8 kHz
    full = next(iter(make_loader(LoaderConfig(urls=view_shards, view="facial", window_frames=50, random_window=False))))
    half = next(iter(make_loader(LoaderConfig(urls=view_shards, view="facial", window_frames=25, fps=12.5,
                                              sample_rate_hz=8000, random_window=False))))
    assert torch.equal(half["motion"], full["motion"][::2]) and half["audio"].shape == (16000,)


def test_huggingface_datasets_loads_the_shards(view_shards):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed")
    ds = datasets.load_dataset("webdataset", data_files={"train": view_shards}, split="train")
    assert len(ds) == sum(1 for _ in wds.WebDataset(view_shards, shardshuffle=False))
    row = ds[0]
    assert "json" in row and row["json"]["num_frames"] > 0


def _reference_masks(boxes: np.ndarray, size: int) -> np.ndarray:
    """The masks as the loader drew them before they were built from boxes after the DataLoader."""
    out = np.zeros((*boxes.shape[:-1], size, size), np.float32)
    for index in np.ndindex(*boxes.shape[:-1]):
        if not np.isnan(boxes[index][0]):
            xa, ya, xb, yb = np.clip(np.round(boxes[index]).astype(int), 0, size)
            out[index][ya:yb, xa:xb] = 1.0
    return out


def test_paha_samples_travel_compact_and_expand_to_the_same_tensors(tmp_path):
    from paha_data import write_paha_shards
    from trainers.data import expand_paha, masks_from_boxes

    shards = write_paha_shards(tmp_path / "s", clips=4, frames=12, size=32)
    cfg = LoaderConfig(urls=shards, view="paha", window_frames=4, image_size=32, batch_size=2)
    compact = next(iter(make_loader(cfg, compact=True)))
    assert compact["video_u8"].dtype == torch.uint8 and compact["video_u8"].shape == (2, 4, 3, 32, 32)
    assert "part_masks" not in compact and "video" not in compact
    full = expand_paha(compact)
    assert torch.equal(full["video"], compact["video_u8"].float() / 255) and full["reference"].shape == (2, 3, 32, 32)
    assert torch.equal(full["part_masks"], torch.from_numpy(_reference_masks(compact["part_boxes"].numpy(), 32)))
    assert full["part_masks"].sum() > 0
    nbytes = lambda b: sum(v.numel() * v.element_size() for v in b.values() if torch.is_tensor(v))  # noqa: E731
    assert nbytes(compact) * 4 < nbytes(full)  # what crosses the workers' shared memory
    # boxes at fractions of a pixel, past the frame's edges, and absent (NaN)
    boxes = torch.tensor([[[2.5, 3.5, 9.49, 31.7], [-4.0, 10.0, 40.0, 12.0], [float("nan")] * 4, [5.0, 5.0, 5.0, 9.0]]])
    assert torch.equal(masks_from_boxes(boxes, 16), torch.from_numpy(_reference_masks(boxes.numpy(), 16)))
    assert torch.equal(next(iter(make_loader(cfg)))["part_masks"], full["part_masks"])  # make_loader expands by default


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_paha_stream_continues_exactly_and_decodes_nothing_it_skips(tmp_path, monkeypatch, workers):
    import copy

    from paha_data import write_paha_shards
    from trainers import data as D

    shards = write_paha_shards(tmp_path / "s", clips=8, frames=12, size=32, per_shard=2)
    cfg = LoaderConfig(urls=shards, view="paha", window_frames=4, image_size=32, batch_size=2, shuffle_buffer=4,
                       shuffle_shards=True, seed=3, num_workers=workers)
    position = {"epoch": 0, "batches": 0}
    stream = D.batch_stream(cfg, position, 0)
    seen = [next(stream)["__key__"] for _ in range(3)]
    saved = copy.deepcopy(position)  # what a checkpoint after 3 batches holds
    seen += [next(stream)["__key__"] for _ in range(4)]  # into the next epoch (4 batches an epoch)
    assert sum(saved["worker_batches"]) == saved["batches"] == 3
    decoded = []
    real = D.decode_frames
    monkeypatch.setattr(D, "decode_frames", lambda *a, **k: decoded.append(1) or real(*a, **k))
    resumed = D.batch_stream(cfg, saved, 0)
    assert [next(resumed)["__key__"] for _ in range(4)] == seen[3:]
    if workers == 0:  # (in worker processes the counter is theirs)
        assert len(decoded) == 4 * 2  # the resumed batches' samples only: the 3 skipped batches decoded nothing


def test_paha_reference_comes_from_another_clip_of_the_same_identity(tmp_path):
    """The PAHA reference is a frame of another clip of the same person when the worker has met one
    (never a frame of the window being generated), decoded from that clip; without one, a frame of
    the clip outside the window. Resumed mid-epoch, the references are those of an unbroken pass."""
    import io

    import av

    from paha_data import write_paha_shards
    from trainers import data as D

    people = ["p0", "p0", "p1", "p0", None, "p1"]
    shards = write_paha_shards(tmp_path / "s", clips=6, frames=12, size=32, per_shard=6, identities=people)
    cfg = LoaderConfig(urls=shards, view="paha", window_frames=4, image_size=32)
    got = list(make_loader(cfg, compact=True))
    keys = [f"body{i:04d}-0000" for i in range(6)]
    assert [g["__key__"] for g in got] == keys
    refs = [g["reference_key"] for g in got]
    assert refs[0] == keys[0] and refs[1] == keys[0] and refs[2] == keys[2] and refs[3] in keys[:2]
    assert refs[4] == keys[4] and refs[5] == keys[2]  # no identity: its own clip; p1 again: clip 2
    mp4 = {s["__key__"]: s["mp4"] for s in wds.WebDataset(shards, shardshuffle=False)}
    for g in got:
        with av.open(io.BytesIO(mp4[g["reference_key"]])) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert torch.equal(g["reference_u8"].permute(1, 2, 0), torch.from_numpy(frames[g["reference_frame"]]))
        if g["reference_key"] == g["__key__"]:
            assert not int(g["frame_index"].min()) <= g["reference_frame"] <= int(g["frame_index"].max())
    # a window the size of the clip: only the clips with an earlier clip of their identity serve
    whole = list(make_loader(LoaderConfig(urls=shards, view="paha", window_frames=12, image_size=32)))
    assert [(w["__key__"], w["reference_key"]) for w in whole] == [(keys[1], keys[0]), (keys[3], refs[3]), (keys[5], keys[2])]
    # off: always the clip's own frame
    own = list(make_loader(LoaderConfig(urls=shards, view="paha", window_frames=4, image_size=32, reference_bank_clips=0)))
    assert [o["reference_key"] for o in own] == keys
    # resumed after 4 samples (dry: nothing decoded), the last two draw the same references
    resumed = list(make_loader(LoaderConfig(urls=shards, view="paha", window_frames=4, image_size=32, batch_size=1),
                               worker_skips=[4], compact=True))
    assert [r["reference_key"][0] for r in resumed] == refs[4:]
    assert all(torch.equal(r["reference_u8"][0], g["reference_u8"]) for r, g in zip(resumed, got[4:]))
    bank = D.ReferenceBank(clips=1, identities=2)
    import random
    for i, who in enumerate(["a", "b", "c", "a"]):
        bank.add(who, f"k{i}", b"", 10, (32, 32), random.Random(i))
    assert bank.pick("a", "k9", random.Random(0)).key == "k3" and bank.pick("b", "k9", random.Random(0)) is None


def _numbered_clip(tmp_path, frames: int, extra: list[str]) -> bytes:
    """An mp4 whose frame n shows the level 8 + 2n in its top half: a decoded frame names its number."""
    import subprocess

    video = np.zeros((frames, 64, 96, 3), np.uint8)
    video[:, :32] = (8 + 2 * np.arange(frames, dtype=np.uint8))[:, None, None, None]
    out = tmp_path / f"numbered{len(extra)}.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x64", "-r", "25",
                    "-i", "-", "-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv444p", *extra, str(out)],
                   input=video.tobytes(), check=True)
    return out.read_bytes()


def test_a_window_is_decoded_from_the_keyframe_before_it(tmp_path, monkeypatch):
    import av

    from trainers.data import decode_frames

    clips = {"1 s GOP (the clip stage's)": _numbered_clip(tmp_path, 120, ["-g", "25"]),
             "one GOP (clips cut before it)": _numbered_clip(tmp_path, 120, []),
             "fragmented (the test shards')": _numbered_clip(tmp_path, 120, ["-g", "25", "-movflags", "frag_keyframe+empty_moov", "-f", "mp4"])}
    decoded = []
    real_open = av.open

    class Counting:  # PyAV's container, counting the frames it decodes
        def __init__(self, *a, **kw):
            self.container = real_open(*a, **kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.container.close()

        def __getattr__(self, name):
            return getattr(self.container, name)

        def decode(self, *a, **kw):
            for frame in self.container.decode(*a, **kw):
                decoded.append(frame.pts)
                yield frame

    monkeypatch.setattr(av, "open", Counting)
    for name, mp4 in clips.items():
        for window in ([0, 1, 2], [97, 98, 99, 100], [119], [30, 110, 31]):
            decoded.clear()
            frames = decode_frames(mp4, window, 32)
            seeked = len(decoded)
            levels = frames[:, 4, 16, 0].astype(int)
            assert np.abs(levels - (8 + 2 * np.array(window))).max() <= 2, f"{name}: frames {window} decoded as {levels}"
            assert np.array_equal(frames, decode_frames(mp4, window, 32, seek=False)), name
            if name.startswith("1 s") and window[0] == 97:
                assert seeked <= 25 + 4, f"decoded {seeked} frames for a window at frame 97 of a 1-s GOP"
    with pytest.raises(ValueError, match="no frame 130"):
        decode_frames(clips["1 s GOP (the clip stage's)"], [118, 130], 32)
