"""Trainer 2's feature store: VAE latents and audio features computed once (``cnas features paha``),
read by the loader instead of decoding video, refused when stale or made for other models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import webdataset as wds
from cli_helpers import cnas
from paha_data import write_paha_shards

from trainers.data import LoaderConfig, make_loader
from trainers.features import INDEX, FeatureStore
from trainers.paha.config import load_paha_config
from trainers.paha.features import feature_meta, write_features
from trainers.paha.model import VideoModel


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("features")
    shards = write_paha_shards(d / "shards", clips=4, frames=12, size=32, per_shard=4, identities=["a", "a", "b", "b"])
    cfg = load_paha_config("tiny", [f"data.urls={json.dumps(shards)}", "run.use_ray=false", f"run.storage_path={d / 'runs'}"])
    got = write_features(cfg, d / "store", echo=lambda m: None)
    assert got["computed"] == 4 and got["kept"] == 0
    return cfg, shards, d / "store"


def _lcfg(cfg, shards, features=None):
    return LoaderConfig(urls=shards, view="paha", window_frames=cfg.data.window_frames, image_size=cfg.data.image_size,
                        seed=3, features=str(features) if features else None)


def test_stored_latents_are_the_per_step_latents_and_no_video_is_decoded(store, monkeypatch):
    from trainers import data as D

    cfg, shards, root = store
    model = VideoModel(cfg.model).eval()
    computed = list(make_loader(_lcfg(cfg, shards)))
    monkeypatch.setattr(D, "decode_frames", lambda *a, **k: pytest.fail("a feature-store sample decoded video"))
    cached = list(make_loader(_lcfg(cfg, shards, root)))
    assert [c["__key__"] for c in cached] == [c["__key__"] for c in computed]
    for a, b in zip(computed, cached):
        assert b["reference_key"] == a["reference_key"] and b["reference_frame"] == a["reference_frame"]
        z = model.encode_frames(a["video"][None])[0]
        assert b["latents"].shape == z.shape and torch.allclose(b["latents"], z, atol=2e-3)  # float16 storage
        zr = model.encode_frames(a["reference"][None, None])[0, 0]
        assert torch.allclose(b["reference_latent"], zr, atol=2e-3)
        assert torch.equal(b["part_masks"], a["part_masks"]) and "video" not in b
        # audio: the clip's features sliced at the window; the window's own agree away from its edges
        own = model.frontend(a["audio"][None], len(a["frame_index"]))[0]
        assert b["audio_features"].shape == own.shape
        r = np.corrcoef(b["audio_features"][1:-1].flatten().numpy(), own[1:-1].flatten().numpy())[0, 1]
        assert r > 0.9, r
    # the losses with stored and computed inputs agree (same timesteps and noise)
    batch_a = {k: v[None] if torch.is_tensor(v) else v for k, v in computed[0].items()}
    batch_b = {k: v[None] if torch.is_tensor(v) else v for k, v in cached[0].items()}
    t = torch.tensor([50])
    with torch.no_grad():
        torch.manual_seed(0)
        la = model.loss(batch_a, False, t=t, p_drop_audio=1.0)[0]
        torch.manual_seed(0)
        lb = model.loss(batch_b, False, t=t, p_drop_audio=1.0)[0]
    assert abs(float(la) - float(lb)) < 1e-2 * float(la)


def test_a_stale_tampered_missing_or_foreign_entry_is_refused(store, tmp_path):
    cfg, shards, root = store
    st = FeatureStore(root)
    sample = next(iter(wds.WebDataset(shards, shardshuffle=False)))
    assert st.load(sample["__key__"], sample)["latents"].shape == (12, 48, 8, 8)
    changed = dict(sample, mp4=sample["mp4"] + b"\0")
    with pytest.raises(ValueError, match=r"its mp4 is not the one the feature store .* was computed from"):
        st.load(sample["__key__"], changed)
    with pytest.raises(ValueError, match=r"'nope-0000' is not in the feature store"):
        st.load("nope-0000", sample)
    other = load_paha_config("tiny", ["model.latent_factor=2"])
    with pytest.raises(ValueError, match=r"latent is 'pixel:4' there, 'pixel:2' here"):
        st.check_meta(feature_meta(other.model, cfg.data.image_size))
    st.check_meta(feature_meta(cfg.model, cfg.data.image_size))
    copy = tmp_path / "copy"
    copy.mkdir()
    index = json.loads((root / INDEX).read_text())
    for e in index["clips"].values():
        (copy / e["file"]).write_bytes((root / e["file"]).read_bytes())
    (copy / INDEX).write_text(json.dumps(index))
    entry = index["clips"][sample["__key__"]]
    (copy / entry["file"]).write_bytes((copy / entry["file"]).read_bytes()[:-1] + b"x")
    with pytest.raises(ValueError, match="does not match its checksum"):
        FeatureStore(copy).load(sample["__key__"], sample)
    index["clips"][sample["__key__"]]["file"] = "../escape.npz"
    (copy / INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="names a file outside the store"):
        FeatureStore(copy).load(sample["__key__"], sample)
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore(tmp_path / "none")


def test_training_reads_the_store_and_the_cli_adds_to_it(store, tmp_path):
    from trainers.paha.train import run_training

    cfg, shards, root = store
    r = cnas("features", "paha", "--set", f"data.urls={json.dumps(shards)}", "--out", root, "--device", "cpu")
    assert r.returncode == 0 and "features of 0 clips computed, 4 kept from before" in r.stdout, r.stdout + r.stderr
    trained = load_paha_config("tiny", [f"data.urls={json.dumps(shards)}", "run.use_ray=false", f"data.features={root}",
                                        f"run.storage_path={tmp_path}", "train.steps=4", "train.checkpoint_every=4",
                                        "train.val_every=0"])
    result = run_training(trained)
    assert result["step"] == 4 and np.isfinite(result["loss"])
    wrong = trained.model_copy(update={"model": trained.model.model_copy(update={"latent_factor": 2})})
    with pytest.raises(ValueError, match="computed with other settings"):
        run_training(wrong)
