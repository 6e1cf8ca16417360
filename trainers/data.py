"""The shard loader both trainers use: a WebDataset pipeline from CNAS shards to tensors.

    loader = make_loader(LoaderConfig(urls="release/train.index.json", view="paha"), epoch=0)

* Shards are split across nodes (``RANK``/``WORLD_SIZE`` or ``torch.distributed``) and across
  DataLoader workers; every shard goes to exactly one (node, worker), so without
  ``epoch_samples`` every sample is seen exactly once per epoch (give at least nodes × workers
  shards). ``epoch_samples`` fixes the epoch length per worker instead (shards repeat as needed).
* Shuffling is deterministic: shard order from (seed, epoch), a sample buffer seeded by
  (seed, epoch, rank).
* ``fps`` and ``sample_rate_hz`` are what the model wants: clips at another frame rate are
  resampled by frame index, audio by polyphase filtering.
* Resuming mid-epoch: ``make_loader(cfg, epoch, skip=n)`` drops the first ``n`` samples the
  DataLoader would have yielded in that epoch (same seed → same order), see ``LoaderState``;
  ``batch_stream`` does this bookkeeping for a training loop.
* Every sample's ``json`` member is read as a ``schemas.ClipRecord``: a shard that does not follow
  the clip contract fails at the first such sample, naming it, instead of deep in a view.

Views: ``facial`` — FLAME expression + jaw sequence (T,53), audio window, emotion label/intensity/
text; ``paha`` — video frames (T,3,S,S) in [0,1] (square by crop, never squashed), audio window, part
confidences/presence (T,5), part boxes (T,5,4) and box masks (T,5,S,S), a reference frame from the
same clip; ``raw`` — decoded members as they are.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from pydantic import ValidationError

from schemas import ClipRecord, FlameFit
from schemas import shard as layout
from schemas.flame import NPZ_MEMBERS

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised", "fear", "disgusted", "contempt")
_INTENSITY_WORDS = {1: "slightly", 2: "clearly", 3: "very"}


@dataclass
class LoaderConfig:
    urls: str | list[str]  # shard paths/URLs, a brace pattern, or a wids index json
    view: str = "raw"  # raw | facial | paha
    window_frames: int = 50
    fps: float = 25.0
    sample_rate_hz: int = 16000
    image_size: int = 256
    shuffle_buffer: int = 0  # 0: no sample shuffling
    shuffle_shards: bool = False
    seed: int = 0
    epoch_samples: int | None = None  # per worker; None: one pass over the worker's shards
    random_window: bool = True
    default_emotion: str = "neutral"
    min_valid_frames: float = 0.0  # facial view: drop windows where a smaller share of frames has a FLAME fit
    batch_size: int | None = None
    num_workers: int = 0


@dataclass
class LoaderState:
    """Where an epoch stands: save it in a checkpoint, pass it back to ``make_loader`` to resume."""

    epoch: int = 0
    samples_seen: int = 0


def resolve_urls(urls: str | list[str]) -> list[str]:
    if isinstance(urls, list):
        return urls
    if urls.endswith(".json"):
        index = json.loads(open(urls).read())
        base = os.path.dirname(os.path.abspath(urls))
        return [e["url"] if "://" in e["url"] else os.path.join(base, e["url"]) for e in index["shardlist"]]
    import braceexpand

    return list(braceexpand.braceexpand(urls))


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def node_info() -> tuple[int, int]:
    from webdataset.utils import pytorch_worker_info

    rank, world, _, _ = pytorch_worker_info()
    return rank, world


def build_dataset(cfg: LoaderConfig, epoch: int = 0):
    """The WebDataset pipeline (an IterableDataset) for one node; wrap it in a DataLoader."""
    import webdataset as wds

    urls = resolve_urls(cfg.urls)
    if cfg.shuffle_shards:
        urls = list(urls)
        random.Random(_seed(cfg.seed, epoch, "shards")).shuffle(urls)
    rank, world = node_info()
    repeat = cfg.epoch_samples is not None
    ds = wds.WebDataset(urls, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, shardshuffle=False,
                        repeat=repeat, empty_check=False)
    if cfg.shuffle_buffer:
        ds = ds.shuffle(cfg.shuffle_buffer, rng=random.Random(_seed(cfg.seed, epoch, rank, "samples")))
    ds = ds.map(functools.partial(decode_sample, cfg, epoch)).select(_not_none)
    if repeat:
        ds = ds.with_epoch(cfg.epoch_samples)
    return ds


def _not_none(sample) -> bool:
    return sample is not None


def make_loader(cfg: LoaderConfig, epoch: int = 0, skip: int = 0):
    """A ``torch.utils.data.DataLoader`` over ``build_dataset``; ``skip`` resumes mid-epoch."""
    import torch

    # a generator of its own: creating an iterator draws a base seed, which must not consume the
    # global RNG (a resumed run creates iterators at other points than an uninterrupted one)
    generator = torch.Generator().manual_seed(_seed(cfg.seed, epoch, "loader") % 2**63)
    loader = torch.utils.data.DataLoader(build_dataset(cfg, epoch), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                         collate_fn=None if cfg.batch_size else _identity, generator=generator)
    if skip:
        return _Skipping(loader, skip)
    return loader


def _identity(x):
    return x


class _Skipping:
    """Iterate a loader from its ``skip``-th item on (the order is deterministic, so this resumes)."""

    def __init__(self, loader, skip: int):
        self.loader, self.skip = loader, skip

    def __iter__(self) -> Iterator[Any]:
        import itertools

        return itertools.islice(iter(self.loader), self.skip, None)


def batch_stream(lcfg: LoaderConfig, position: dict[str, int], rank: int) -> Iterator[dict[str, Any]]:
    """Endless batches from ``make_loader``, epoch after epoch; ``position`` (epoch, batches) is
    kept current so a checkpoint can resume the data exactly where it was."""
    while True:
        got = 0
        for batch in make_loader(lcfg, epoch=position["epoch"], skip=position["batches"]):
            got += 1
            position["batches"] += 1
            yield batch
        if got == 0 and position["batches"] == 0:
            raise RuntimeError(f"training worker {rank} got no usable {lcfg.window_frames}-frame windows ({lcfg.view} view) "
                               f"from the shards {lcfg.urls!r}: every worker needs at least one shard with such clips")
        position["epoch"] += 1
        position["batches"] = 0


# ---------------------------------------------------------------------------------------------
# decoding


def clip_record(sample: dict[str, Any]) -> ClipRecord:
    """The sample's ``json`` member as a clip record; a ValueError naming the sample (and its
    shard) when the member is missing or does not match the contract."""
    where = f"sample {sample.get('__key__')!r}" + (f" of {sample['__url__']}" if "__url__" in sample else "")
    if "json" not in sample:
        raise ValueError(f"{where} has no json member (the clip record)")
    try:
        return ClipRecord.model_validate_json(sample[layout.JSON])
    except ValidationError as e:
        raise ValueError(f"{where}: its json does not match the clip record (schemas.ClipRecord): {e}") from e


def decode_sample(cfg: LoaderConfig, epoch: int, sample: dict[str, Any]) -> dict[str, Any] | None:
    """Raw tar members → tensors of the configured view; None when the sample cannot serve it."""
    clip = clip_record(sample)
    key = sample["__key__"]
    rng = random.Random(_seed(cfg.seed, epoch, key))
    if cfg.view == "raw":  # the record as a plain dict: the DataLoader's default collate batches dicts, not models
        return {"__key__": key, "json": clip.model_dump(mode="json"),
                **{k: v for k, v in sample.items() if k in layout.ALL_MEMBERS and k != layout.JSON}}
    # the window is counted in frames at cfg.fps; clips at another rate are resampled by index
    src_fps, T = clip.fps, clip.num_frames
    W = cfg.window_frames
    available = int(np.floor(T / src_fps * cfg.fps + 1e-6))
    if available < W:
        return None
    start = rng.randrange(0, available - W + 1) if cfg.random_window else 0
    idx = np.minimum(np.floor((start + np.arange(W)) * src_fps / cfg.fps + 1e-6).astype(int), T - 1)
    audio = _audio_window(sample[layout.WAV], start / cfg.fps, W / cfg.fps, cfg.sample_rate_hz)
    if cfg.view == "facial":
        return facial_view(clip, sample, idx, audio, cfg)
    if cfg.view == "paha":
        return paha_view(clip, sample, idx, audio, cfg, rng)
    raise ValueError(f"unknown view {cfg.view!r}")


def _audio_window(wav: bytes, start_s: float, length_s: float, sr: int):
    import soundfile as sf
    import torch

    audio, file_sr = sf.read(io.BytesIO(wav), dtype="float32")
    if file_sr != sr:  # polyphase resampling to the rate the model expects
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(file_sr), int(sr))
        audio = resample_poly(audio, sr // g, int(file_sr) // g).astype(np.float32)
    s0, n = round(start_s * sr), round(length_s * sr)
    out = np.zeros(n, np.float32)
    chunk = audio[s0 : s0 + n]
    out[: len(chunk)] = chunk
    return torch.from_numpy(out)


def emotion_of(clip: ClipRecord, default: str) -> tuple[str, int, str]:
    """(label, intensity 1-3, text) of a clip from its source metadata, ``default`` when unlabelled."""
    m = clip.source_metadata
    label = str(m.get("emotion") or default).lower()
    if label not in EMOTIONS:  # a typo would otherwise train as another emotion
        raise ValueError(f"clip {clip.key}: emotion {label!r} is not one of {', '.join(EMOTIONS)}")
    intensity = int(m.get("emotion_intensity") or 1)
    text = m.get("emotion_text") or f"a {_INTENSITY_WORDS.get(intensity, 'clearly')} {label} face"
    return label, intensity, text


def facial_view(clip: ClipRecord, sample: dict[str, Any], idx: np.ndarray, audio, cfg: LoaderConfig) -> dict[str, Any] | None:
    """The ``facial`` view of a sample's window ``idx``; None without (enough) FLAME parameters."""
    import torch

    if layout.FLAME not in sample:
        return None  # the facial model needs FLAME parameters
    with np.load(io.BytesIO(sample[layout.FLAME])) as z:
        fit = {k: z[k] for k in NPZ_MEMBERS if k in z.files}
    try:
        FlameFit.from_arrays(fit)
    except ValueError as e:
        raise ValueError(f"sample {sample['__key__']}: flame.npz does not match schemas.FlameFit: {e}") from None
    if len(fit["valid"]) != clip.num_frames:
        raise ValueError(f"sample {sample['__key__']}: flame.npz has {len(fit['valid'])} frames, the clip {clip.num_frames}")
    exp, pose, valid = fit["exp"][idx], fit["pose"][idx], fit["valid"][idx]
    if valid.mean() < cfg.min_valid_frames:
        return None
    label, intensity, text = emotion_of(clip, cfg.default_emotion)
    return {
        "__key__": sample["__key__"],
        "motion": torch.from_numpy(np.concatenate([exp, pose[:, 3:6]], axis=1).astype(np.float32)),  # (W, 50 + 3 jaw)
        "global_pose": torch.from_numpy(pose[:, :3].astype(np.float32)),
        "valid": torch.from_numpy(valid.astype(bool)),
        "audio": audio,
        "emotion_label": EMOTIONS.index(label),
        "emotion_intensity": intensity,
        "emotion_text": text,
    }


def centre_square(width: int, height: int) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of the largest centred square of a ``width``×``height`` frame.

    The one rule that makes a frame square for trainer 2: the ``paha`` view applies it to clips
    without an ingest ``crop_box`` and ``cnas generate paha`` to the reference image, so a model
    sees faces at the same proportions in training and generation (a resize would squash a 16:9
    frame's faces to 9/16 of their width)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def decode_frames(mp4: bytes, indices: list[int], size: int, expect_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Frames ``indices`` of an mp4 (decoded with PyAV) as size×size RGB uint8: the centred square
    of each frame (``centre_square``; a square frame is kept whole), resized — never squashed.
    ``expect_wh``: the frame size the clip record states; a ValueError when the video differs."""
    import av
    import cv2

    wanted = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(mp4)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                if expect_wh is not None and (w, h) != tuple(expect_wh):
                    raise ValueError(f"the video is {w}x{h}, its clip record says {expect_wh[0]}x{expect_wh[1]}")
                x0, y0, side = centre_square(w, h)
                got[i] = cv2.resize(rgb[y0: y0 + side, x0: x0 + side], (size, size), interpolation=cv2.INTER_AREA)
            if i >= wanted[-1]:
                break
    return np.stack([got[i] for i in indices])


def paha_view(clip: ClipRecord, sample: dict[str, Any], idx: np.ndarray, audio, cfg: LoaderConfig,
              rng: random.Random) -> dict[str, Any] | None:
    """The ``paha`` view of a sample's window ``idx``; None without pose data.

    Frames are made square without squashing: a clip cut with an ingest ``crop_box`` already is
    square; any other clip is centre-cropped to a square (``centre_square``, the rule generation
    applies to its reference image). Part boxes go through the same crop and scale: ``part_boxes``
    (W, P, 4) in view pixels (NaN where absent; not clipped to the frame, so a face track can run
    past the edge), ``part_masks`` the boxes clipped to the frame. A part whose box lies wholly
    outside the square is not in the view: ``part_present`` False, confidence 0."""
    import torch

    if layout.POSE not in sample:
        return None  # PAR needs part confidences
    W, S = len(idx), cfg.image_size
    ref = rng.randrange(0, clip.num_frames)
    try:
        frames = decode_frames(sample[layout.MP4], idx.tolist() + [ref], S, expect_wh=(clip.width, clip.height))
    except ValueError as e:
        raise ValueError(f"sample {sample['__key__']!r}: {e}") from None
    with np.load(io.BytesIO(sample[layout.POSE])) as z:
        conf, present, boxes = z["part_confidences"][idx], z["part_present"][idx], z["part_boxes"][idx]
    # part boxes are in the normalised video's pixels. A crop_box clip is that video's square
    # (x, y, side) scaled to clip.width; any other clip is the normalised frame itself, of which
    # the view keeps the centred square (decode_frames)
    x0, y0, side = clip.crop_box if clip.crop_box else centre_square(clip.width, clip.height)
    offset = np.array([x0, y0, x0, y0], np.float32)
    b = (boxes.astype(np.float32) - offset) * np.float32(S / side)
    present = present.astype(bool) & ~np.isnan(b[..., 0])
    inside = (b[..., 2] > 0) & (b[..., 0] < S) & (b[..., 3] > 0) & (b[..., 1] < S)
    present &= inside
    conf = np.where(present, conf, 0.0).astype(np.float32)
    b[~present] = np.nan
    masks = np.zeros((W, conf.shape[1], S, S), np.float32)
    for t, p in zip(*np.nonzero(present)):
        xa, ya, xb, yb = np.clip(np.round(b[t, p]).astype(int), 0, S)
        masks[t, p, ya:yb, xa:xb] = 1.0
    video = torch.from_numpy(frames[:W]).permute(0, 3, 1, 2).float() / 255.0
    return {
        "__key__": sample["__key__"],
        "video": video,  # (W, 3, S, S) in [0, 1]
        "reference": torch.from_numpy(frames[W]).permute(2, 0, 1).float() / 255.0,
        "audio": audio,
        "part_confidences": torch.from_numpy(conf),
        "part_present": torch.from_numpy(present),
        "part_boxes": torch.from_numpy(b),  # (W, P, 4) [x0, y0, x1, y1] in view pixels, NaN = absent
        "part_masks": torch.from_numpy(masks),
    }
