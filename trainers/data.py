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
* Shards and indexes are untrusted input (see ``resolve_shards``): a shard is a local file — one
  an index names must lie inside the index's folder, symlinks resolved — or an http(s)/s3/gs URL,
  opened by this module without a shell (WebDataset's ``gopen``, which runs ``pipe:`` URLs as shell
  commands, is never used); an index's ``sha256``/``filesize`` are checked before a byte of the
  shard is decoded; a tar member over ``max_member_bytes`` or a sparse member fails the shard
  before it is read.

Views: ``facial`` — FLAME expression + jaw sequence (T,53), audio window, emotion label/intensity/
text; ``paha`` — video frames (T,3,S,S) in [0,1] (square by crop, never squashed), audio window, part
confidences/presence (T,5), part boxes (T,5,4) and box masks (T,5,S,S), a reference frame from another
clip of the same identity when the worker has met one (``ReferenceBank``), else from the same clip outside
the window; ``raw`` — decoded members as they are.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
import re
import stat
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import numpy as np
from pydantic import ValidationError

from geometry.landmark_codec import decode_pose_member
from schemas import EMOTIONS, ClipRecord, FlameFit
from schemas import shard as layout
from schemas.flame import NPZ_MEMBERS

_INTENSITY_WORDS = {1: "slightly", 2: "clearly", 3: "very"}
# the Chinese templates: "<degree><emotion>的表情" ("a <degree> <emotion> face")
_INTENSITY_WORDS_ZH = {1: "略显", 2: "明显", 3: "非常"}
_EMOTION_WORDS_ZH = {"neutral": "平静", "happy": "开心", "sad": "悲伤", "angry": "愤怒", "surprised": "惊讶",
                     "fear": "恐惧", "disgusted": "厌恶", "contempt": "轻蔑"}
DEFAULT_MAX_MEMBER_BYTES = 512 * 2**20  # the largest tar member the loader reads into memory
REMOTE_SCHEMES = ("http", "https", "s3", "gs")


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
    # facial view: a clip without a human label (source metadata ``emotion``) takes its emotion
    # stage pseudo-label when the estimate's confidence reaches this; 1.01: never
    min_emotion_confidence: float = 0.6
    emotion_text_language: str = "auto"  # en | zh | auto (the clip's language: zh… → Chinese, else English)
    min_valid_frames: float = 0.0  # facial view: drop windows where a smaller share of frames has a FLAME fit
    batch_size: int | None = None
    num_workers: int = 0
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES  # a larger (or a sparse) tar member fails its shard unread
    pin_memory: bool = False  # page-locked batches for a fast (non-blocking) copy to a GPU
    # paha view: take the reference frame from another clip of the clip's identity when the worker
    # has met one (``ReferenceBank``); it remembers this many clips per identity, of this many identities
    reference_bank_clips: int = 2  # 0: always a frame of the same clip, outside the window
    reference_bank_identities: int = 16  # each clip is its mp4 bytes: 32 clips of 1-3 MB a loader worker at most
    # paha view: a feature store (trainers/features.py, ``cnas features paha``): the window's VAE latents
    # and audio features are read from it and no video is decoded
    features: str | None = None


@dataclass
class LoaderState:
    """Where an epoch stands: save it in a checkpoint, pass it back to ``make_loader`` to resume."""

    epoch: int = 0
    samples_seen: int = 0


@dataclass(frozen=True)
class Shard:
    """One shard the loader may open: ``url`` is an absolute local path (symlinks resolved) or an
    http(s)/s3/gs URL; ``sha256``/``filesize`` come from the index when it states them; ``entry`` is
    how the index or the config named the shard (for error messages)."""

    url: str
    remote: bool = False
    sha256: str | None = None
    filesize: int | None = None
    entry: str = ""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def _shard(url: Any, base: str | None, where: str, sha256: Any = None, filesize: Any = None) -> Shard:
    """Check one shard url; ``base``: the index's folder, which a local shard must resolve inside."""
    if not isinstance(url, str) or not url or any(ord(c) < 32 or c == "\x7f" for c in url):
        raise ValueError(f"{where}: shard url {url!r} is not a path or URL")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ValueError(f"{where}: sha256 {sha256!r} of shard {url!r} is not a hex sha256")
    if filesize is not None and not (isinstance(filesize, int) and not isinstance(filesize, bool) and filesize >= 0):
        raise ValueError(f"{where}: filesize {filesize!r} of shard {url!r} is not a byte count")
    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m else ""
    if scheme in REMOTE_SCHEMES:
        parts = urlsplit(url)
        if not parts.netloc or " " in url:
            raise ValueError(f"{where}: shard url {url!r} is not a valid {scheme} URL")
        return Shard(url, True, sha256 and sha256.lower(), filesize, url)
    if scheme == "file":
        path = unquote(urlsplit(url).path)
    elif scheme:
        raise ValueError(f"{where}: shard url {url!r} uses the scheme {scheme!r}; the loader reads local paths and "
                         f"{'/'.join(REMOTE_SCHEMES)} URLs only (pipe: and other schemes are refused)")
    else:
        path = url
    path = os.path.expanduser(path) if base is None else path
    real = os.path.realpath(os.path.join(base or os.getcwd(), path))
    if base is not None:
        root = os.path.realpath(base)
        if os.path.commonpath([root, real]) != root:
            raise ValueError(f"{where}: shard url {url!r} resolves to {real}, outside the index's folder {root} "
                             "(absolute paths elsewhere, '..' and symlinks out of the folder are refused)")
    return Shard(real, False, sha256 and sha256.lower(), filesize, url)


def resolve_shards(urls: str | list[str]) -> list[Shard]:
    """The shards of ``urls`` — a list of paths/URLs, a brace pattern, or a wids index json whose
    ``shardlist`` entries name shards relative to the index's folder — each checked by ``_shard``:
    a ValueError naming the entry for anything that is not a local path (inside the index's folder
    when an index names it) or an http(s)/s3/gs URL."""
    if isinstance(urls, (list, tuple)):
        return [_shard(u, None, f"data url #{i}") for i, u in enumerate(urls)]
    if urls.endswith(".json"):
        with open(urls, encoding="utf-8") as f:
            index = json.load(f)
        base = os.path.dirname(os.path.abspath(urls))
        entries = index.get("shardlist") if isinstance(index, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{urls}: not a shard index (no 'shardlist' list)")
        out = []
        for i, e in enumerate(entries):
            where = f"{urls}: shardlist[{i}]"
            if not isinstance(e, dict) or "url" not in e:
                raise ValueError(f"{where}: an entry needs a 'url'")
            out.append(_shard(e["url"], base, where, e.get("sha256"), e.get("filesize")))
        return out
    import braceexpand

    return [_shard(u, None, f"data url {u!r}") for u in braceexpand.braceexpand(urls)]


# ---------------------------------------------------------------------------------------------
# opening shards: no shell, no WebDataset gopen; checksums before any byte reaches a decoder

_verified: set[tuple] = set()  # (path, dev, inode, size, mtime_ns, sha256) this process has hashed


def _curl_argv(url: str) -> list[str]:
    """curl's arguments for an http(s) shard: one argv (no shell), no URL globbing, http(s) only,
    redirects included."""
    return ["curl", "--globoff", "--proto", "=http,https", "--proto-redir", "=http,https", "--connect-timeout", "30",
            "--retry", "30", "--retry-delay", "2", "-f", "-s", "-L", "--", url]


def _remote_stream(url: str):
    if urlsplit(url).scheme.lower() in ("http", "https"):
        from webdataset.gopen import Pipe

        return Pipe(_curl_argv(url), mode="rb", bufsize=8192, ignore_status=[141, 23])  # a list: no shell
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(url)
    return fs.open_input_stream(path)


def _checked(shard: Shard, digest: str) -> None:
    if shard.sha256 and digest != shard.sha256:
        raise ValueError(f"shard {shard.entry!r} ({shard.url}): sha256 {digest} does not match the index's "
                         f"{shard.sha256} (corrupt or tampered shard)")


def _copy_hashed(src, dst, shard: Shard) -> int:
    """Copy ``src`` to ``dst`` (None: only read) hashing it; a ValueError when the sha256 or the
    index's filesize does not hold. Returns the byte count."""
    h, n = hashlib.sha256(), 0
    while chunk := src.read(1 << 20):
        n += len(chunk)
        if shard.filesize is not None and n > shard.filesize:
            raise ValueError(f"shard {shard.entry!r} ({shard.url}): more than the {shard.filesize} bytes its index states")
        h.update(chunk)
        if dst is not None:
            dst.write(chunk)
    if shard.filesize is not None and n != shard.filesize:
        raise ValueError(f"shard {shard.entry!r} ({shard.url}): {n} bytes, its index says {shard.filesize}")
    _checked(shard, h.hexdigest())
    return n


def open_shard(shard: Shard):
    """A binary stream of the shard's bytes, checked against the index's filesize and sha256 before
    it is returned (a remote shard with either is downloaded to an unnamed temporary file first)."""
    if shard.remote:
        stream = _remote_stream(shard.url)
        if not (shard.sha256 or shard.filesize is not None):
            return stream
        import tempfile

        spool = tempfile.TemporaryFile()
        try:
            with stream:
                _copy_hashed(stream, spool, shard)
            spool.seek(0)
            return spool
        except BaseException:
            spool.close()
            raise
    try:  # the resolved path: O_NOFOLLOW keeps a symlink swapped in since from being followed
        fd = os.open(shard.url, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FileNotFoundError(f"shard {shard.entry!r}: cannot open {shard.url}: {e.strerror}") from None
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise ValueError(f"shard {shard.entry!r}: {shard.url} is not a regular file")
        os.set_blocking(fd, True)
        if shard.filesize is not None and st.st_size != shard.filesize:
            raise ValueError(f"shard {shard.entry!r} ({shard.url}): {st.st_size} bytes, its index says {shard.filesize}")
        if shard.sha256:
            key = (shard.url, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, shard.sha256)
            if key not in _verified:  # hashed once per process; the bytes read next come from the same open file
                _copy_hashed(f, None, shard)
                _verified.add(key)
            f.seek(0)
        return f
    except BaseException:
        f.close()
        raise


_META = re.compile(r"__[^/]*__($|/)")


def tar_members(stream, url: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
    """``{fname, data, __url__}`` for each regular member of a tar stream (WebDataset's
    ``tar_file_iterator``, with limits): a sparse member, or one over ``max_member_bytes``, is a
    ValueError naming the shard and member, raised before the member is read."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            if info.issparse() or info.type == tarfile.GNUTYPE_SPARSE:
                raise ValueError(f"{url}: tar member {info.name!r} is a sparse file ({info.size} bytes once expanded); "
                                 "shards never hold sparse members, it is refused unread")
            if not info.isreg() or info.name is None:
                continue
            name = info.name
            if ("/" not in name and name.startswith("__") and name.endswith("__")) or _META.match(name):
                continue
            if info.size > max_member_bytes:
                raise ValueError(f"{url}: tar member {name!r} is {info.size} bytes, over the loader's limit of "
                                 f"{max_member_bytes} bytes per member (data.max_member_mb); refused unread")
            data = tar.extractfile(info).read()
            yield {"fname": name, "data": data, "__url__": url}
            tar.members = []  # a stream of many members must not keep every header
    except tarfile.TarError as e:
        raise ValueError(f"{url}: not a readable tar shard: {e}") from None


def _shard_files(max_member_bytes: int, shards) -> Iterator[dict[str, Any]]:
    """Open each shard and expand it into files, with an end-of-shard marker (WebDataset's ``{}``)."""
    for shard in shards:
        stream = open_shard(shard)
        try:
            yield from tar_members(stream, shard.url, max_member_bytes)
        finally:
            stream.close()
        yield {}


def _secure_worker(worker_id: int) -> None:
    """DataLoader workers only read: WebDataset's own security switch on (no pipe:, no local gopen)
    as a second line behind this module, which never hands a URL to WebDataset."""
    import webdataset.utils

    webdataset.utils.enforce_security = True


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def node_info() -> tuple[int, int]:
    from webdataset.utils import pytorch_worker_info

    rank, world, _, _ = pytorch_worker_info()
    return rank, world


def build_dataset(cfg: LoaderConfig, epoch: int = 0, worker_skips: list[int] | tuple[int, ...] = ()):
    """The WebDataset pipeline (an IterableDataset) for one node; wrap it in a DataLoader.
    ``worker_skips[w]``: batches DataLoader worker ``w`` (0 without workers) already gave this epoch —
    skipped without decoding their media (``_decode_stream``), so a resumed run starts where it was.

    WebDataset's stages split, group and shuffle; the shards are opened and expanded here
    (``open_shard``, ``tar_members``), never by WebDataset's URL opener."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys

    shards = resolve_shards(cfg.urls)
    if cfg.shuffle_shards:
        random.Random(_seed(cfg.seed, epoch, "shards")).shuffle(shards)
    rank, world = node_info()
    stages = [_ShardList(shards), wds.split_by_node, wds.split_by_worker,
              functools.partial(_shard_files, cfg.max_member_bytes), group_by_keys]
    if cfg.shuffle_buffer:
        stages.append(wds.shuffle(cfg.shuffle_buffer, rng=random.Random(_seed(cfg.seed, epoch, rank, "samples"))))
    stages.append(functools.partial(_decode_stream, cfg, epoch, tuple(worker_skips)))
    ds = wds.DataPipeline(*stages)
    if cfg.epoch_samples is not None:
        ds = ds.with_epoch(cfg.epoch_samples)  # shards repeat as needed
    return ds


class _ShardList:
    """The first pipeline stage: the shards, in order (split by node and worker next)."""

    def __init__(self, shards: list[Shard]):
        self.shards = list(shards)

    def __call__(self) -> Iterator[Shard]:
        return iter(self.shards)


def _decode_stream(cfg: LoaderConfig, epoch: int, worker_skips: tuple[int, ...], samples: Iterator[dict[str, Any]]):
    """Decode the samples of this DataLoader worker, leaving out those that cannot serve the view.
    The first ``worker_skips[w]`` batches' worth of usable samples are only checked (``dry``: record,
    window and RNG draws, no media decoded) and dropped: resuming mid-epoch costs no decoding. With
    DataLoader workers each sample carries ``__worker__`` so ``batch_stream`` counts each worker's batches."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    per_batch = cfg.batch_size or 1
    to_skip = (worker_skips[worker] if worker < len(worker_skips) else 0) * per_batch
    # one bank per worker and epoch; dry samples fill it as decoded ones do, so a resumed run draws
    # the same references as an uninterrupted one
    bank = ReferenceBank(cfg.reference_bank_clips, cfg.reference_bank_identities)
    for sample in samples:
        if to_skip:
            if decode_sample(cfg, epoch, sample, dry=True, bank=bank) is not None:
                to_skip -= 1
            continue
        out = decode_sample(cfg, epoch, sample, bank=bank)
        if out is not None:
            if info is not None:
                out["__worker__"] = worker
            yield out


def make_loader(cfg: LoaderConfig, epoch: int = 0, skip: int = 0, worker_skips: list[int] | None = None,
                compact: bool = False):
    """A ``torch.utils.data.DataLoader`` over ``build_dataset``. Resuming mid-epoch: ``worker_skips``
    (each DataLoader worker's batches so far, as ``batch_stream`` records them) skips without
    decoding; ``skip`` (batches in all, a position saved before that existed) decodes and drops them.
    ``paha`` batches come out with float frames and part masks (``expand_paha``, in this process);
    ``compact``: as the workers sent them (uint8 frames, boxes, ``__worker__``), for ``batch_stream``
    to count and to expand on its device."""
    import torch

    # a generator of its own: creating an iterator draws a base seed, which must not consume the
    # global RNG (a resumed run creates iterators at other points than an uninterrupted one)
    generator = torch.Generator().manual_seed(_seed(cfg.seed, epoch, "loader") % 2**63)
    dataset = build_dataset(cfg, epoch, worker_skips or ())
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                         collate_fn=None if cfg.batch_size else _identity, generator=generator,
                                         worker_init_fn=_secure_worker if cfg.num_workers else None,
                                         pin_memory=cfg.pin_memory)
    out = _Skipping(loader, skip) if skip and not worker_skips else loader
    return out if compact else _Expanded(out)


class _Expanded:
    """A loader's batches as the models read them: ``paha`` ones expanded (``expand_paha``), the
    worker tag dropped."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if isinstance(batch, dict):
                batch.pop("__worker__", None)
                batch = expand_paha(batch)
            yield batch


def _identity(x):
    return x


class _Skipping:
    """Iterate a loader from its ``skip``-th item on (the order is deterministic, so this resumes)."""

    def __init__(self, loader, skip: int):
        self.loader, self.skip = loader, skip

    def __iter__(self) -> Iterator[Any]:
        import itertools

        return itertools.islice(iter(self.loader), self.skip, None)


def batch_stream(lcfg: LoaderConfig, position: dict[str, Any], rank: int, device=None) -> Iterator[dict[str, Any]]:
    """Endless batches from ``make_loader``, epoch after epoch; ``position`` (epoch, batches, and each
    DataLoader worker's batches) is kept current so a checkpoint resumes the data exactly where it
    was, without decoding what it skips. ``device``: ``paha`` batches arrive compact and are
    expanded there (frames to float, part masks from boxes: ``expand_paha``)."""
    import torch

    non_blocking = lcfg.pin_memory and device is not None and torch.device(device).type == "cuda"
    while True:
        got = 0
        workers = position.setdefault("worker_batches", [])
        if position["batches"] and not workers:  # a position saved before per-worker counts: decode to skip
            loader = make_loader(lcfg, epoch=position["epoch"], skip=position["batches"], compact=True)
            # the DataLoader hands out its workers' batches in turn: their shares of what was skipped
            n = max(lcfg.num_workers, 1)
            workers.extend(len(range(w, position["batches"], n)) for w in range(n))
        else:
            loader = make_loader(lcfg, epoch=position["epoch"], worker_skips=list(workers), compact=True)
        for batch in loader:
            worker = batch.pop("__worker__", None)
            w = int(worker[0]) if torch.is_tensor(worker) else int(worker or 0)
            workers.extend([0] * (w + 1 - len(workers)))
            workers[w] += 1
            got += 1
            position["batches"] += 1
            yield expand_paha(batch, device, non_blocking)
        if got == 0 and position["batches"] == 0:
            raise RuntimeError(f"training worker {rank} got no usable {lcfg.window_frames}-frame windows ({lcfg.view} view) "
                               f"from the shards {lcfg.urls!r}: every worker needs at least one shard with such clips")
        position["epoch"] += 1
        position["batches"] = 0
        position["worker_batches"] = []


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


def decode_sample(cfg: LoaderConfig, epoch: int, sample: dict[str, Any], dry: bool = False,
                  bank: ReferenceBank | None = None) -> dict[str, Any] | None:
    """Raw tar members → tensors of the configured view; None when the sample cannot serve it.
    ``dry``: decide only whether it can (an empty dict when it can), decoding no audio or video:
    the decision and the sample's random draws are the same as the full decode's. ``bank``: the
    worker's clips so far, where the ``paha`` view finds a reference of the same identity."""
    clip = clip_record(sample)
    key = sample["__key__"]
    rng = random.Random(_seed(cfg.seed, epoch, key))
    if cfg.view == "raw":  # the record as a plain dict: the DataLoader's default collate batches dicts, not models
        if dry:
            return {}
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
    audio = None if dry else _audio_window(sample[layout.WAV], start / cfg.fps, W / cfg.fps, cfg.sample_rate_hz)
    if cfg.view == "facial":
        out = facial_view(clip, sample, idx, audio, cfg)  # no media: its FLAME arrays decide
        return None if out is None else ({} if dry else out)
    if cfg.view == "paha":
        return paha_view(clip, sample, idx, audio, cfg, rng, dry, bank)
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


def emotion_text(label: str, intensity: int, language: str) -> str:
    """The template text of an emotion: ``en`` "a clearly happy face", ``zh`` "明显开心的表情"."""
    if language == "zh":
        return f"{_INTENSITY_WORDS_ZH.get(intensity, '明显')}{_EMOTION_WORDS_ZH[label]}的表情"
    return f"a {_INTENSITY_WORDS.get(intensity, 'clearly')} {label} face"


def emotion_of(clip: ClipRecord, default: str, min_confidence: float = 1.01, language: str = "en") -> tuple[str, int, str, str]:
    """(label, intensity 1-3, text, source) of a clip. ``source``: ``metadata`` (a human label in the
    sources file), ``estimate`` (the emotion stage's pseudo-label, used when its confidence is at
    least ``min_confidence``) or ``default``. ``language``: of the template text (en | zh | auto:
    the clip's); a text in the metadata is used as it is."""
    m = clip.source_metadata
    est = clip.emotion_estimate
    if m.get("emotion"):
        label, source = str(m["emotion"]).lower(), "metadata"
    elif est is not None and est.confidence >= min_confidence:
        label, source = est.label, "estimate"
    else:
        label, source = str(default).lower(), "default"
    if label not in EMOTIONS:  # a typo would otherwise train as another emotion
        raise ValueError(f"clip {clip.key}: emotion {label!r} is not one of {', '.join(EMOTIONS)}")
    intensity = int(m.get("emotion_intensity") or 1)
    if language == "auto":
        language = "zh" if (clip.language or "").lower().startswith("zh") else "en"
    text = m.get("emotion_text") or emotion_text(label, intensity, language)
    return label, intensity, text, source


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
    label, intensity, text, source = emotion_of(clip, cfg.default_emotion, cfg.min_emotion_confidence, cfg.emotion_text_language)
    return {
        "__key__": sample["__key__"],
        "motion": torch.from_numpy(np.concatenate([exp, pose[:, 3:6]], axis=1).astype(np.float32)),  # (W, 50 + 3 jaw)
        "global_pose": torch.from_numpy(pose[:, :3].astype(np.float32)),
        "valid": torch.from_numpy(valid.astype(bool)),
        "audio": audio,
        "emotion_label": EMOTIONS.index(label),
        "emotion_intensity": intensity,
        "emotion_text": text,
        "emotion_source": source,  # metadata | estimate | default
    }


def centre_square(width: int, height: int) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of the largest centred square of a ``width``×``height`` frame.

    The one rule that makes a frame square for trainer 2: the ``paha`` view applies it to clips
    without an ingest ``crop_box`` and ``cnas generate paha`` to the reference image, so a model
    sees faces at the same proportions in training and generation (a resize would squash a 16:9
    frame's faces to 9/16 of their width)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def decode_frames(mp4: bytes, indices: list[int], size: int, expect_wh: tuple[int, int] | None = None,
                  seek: bool = True) -> np.ndarray:
    """Frames ``indices`` of an mp4 (decoded with PyAV) as size×size RGB uint8: the centred square
    of each frame (``centre_square``; a square frame is kept whole), resized — never squashed.
    ``expect_wh``: the frame size the clip record states; a ValueError when the video differs.

    With ``seek``, decoding starts at the last keyframe at or before the first wanted frame (clips
    are cut with a keyframe every ``clips.keyframe_every_s``), so a window late in a clip costs about
    a GOP, not the whole clip; frames are numbered by their timestamps (pts = start + n / fps in a
    cut clip). A stream without timestamps is decoded from its first frame, counting frames."""
    import av
    import cv2

    wanted = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        rate, tb, start = stream.average_rate or stream.guessed_rate, stream.time_base, stream.start_time or 0
        by_pts, no_pts = seek and bool(rate and tb), False
        if by_pts and wanted[0] > 0:
            container.seek(start + int(wanted[0] / rate / tb), stream=stream, backward=True, any_frame=False)
        for counted, frame in enumerate(container.decode(stream)):
            if by_pts and frame.pts is None:
                no_pts = True
                break
            i = int(round(float((frame.pts - start) * tb * rate))) if by_pts else counted
            if i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                if expect_wh is not None and (w, h) != tuple(expect_wh):
                    raise ValueError(f"the video is {w}x{h}, its clip record says {expect_wh[0]}x{expect_wh[1]}")
                x0, y0, side = centre_square(w, h)
                got[i] = cv2.resize(rgb[y0: y0 + side, x0: x0 + side], (size, size), interpolation=cv2.INTER_AREA)
            if i >= wanted[-1]:
                break
    if no_pts:  # timestamps missing: count frames from the start instead
        return decode_frames(mp4, indices, size, expect_wh, seek=False)
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ValueError(f"the video has no frame {missing[0]} (it is shorter than its clip record says)")
    return np.stack([got[i] for i in indices])


@dataclass
class _BankClip:
    key: str
    mp4: bytes
    frame: int  # the frame it offers as a reference, drawn when it was banked
    wh: tuple[int, int]
    decoded: Any = None  # (S, S, 3) uint8 once a sample used it


class ReferenceBank:
    """The clips a loader worker has met, by identity: where a ``paha`` sample finds its reference
    frame in *another* clip of the same person (the paper's setting: one image of the person, new
    audio), so the model learns to animate a reference rather than copy a frame of the clip it
    generates. Holds the mp4 bytes and one drawn frame index per clip (no decoding until a sample
    uses it, so a dry, resumed pass fills it the same way); ``clips`` per identity (the newest), of
    at most ``identities`` identities (the least recently met dropped first)."""

    def __init__(self, clips: int = 2, identities: int = 16):
        self.clips, self.identities = clips, identities
        self._by_identity: dict[str, list[_BankClip]] = {}

    def pick(self, identity: str | None, key: str, rng: random.Random) -> _BankClip | None:
        """A banked clip of ``identity`` other than ``key`` (drawn with ``rng``), or None."""
        others = [c for c in self._by_identity.get(identity or "", []) if c.key != key]
        return rng.choice(others) if others else None

    def add(self, identity: str | None, key: str, mp4: bytes, num_frames: int, wh: tuple[int, int],
            rng: random.Random) -> None:
        if not identity or self.clips <= 0:
            return
        held = self._by_identity.pop(identity, [])  # re-inserted last: the most recently met
        held = [c for c in held if c.key != key] + [_BankClip(key, mp4, rng.randrange(num_frames), tuple(wh))]
        self._by_identity[identity] = held[-self.clips:]
        while len(self._by_identity) > self.identities:
            self._by_identity.pop(next(iter(self._by_identity)))

    def frame(self, clip: _BankClip, size: int) -> np.ndarray:
        """The banked clip's reference frame, square ``size``×``size`` RGB (decoded once)."""
        if clip.decoded is None or clip.decoded.shape[0] != size:
            clip.decoded = decode_frames(clip.mp4, [clip.frame], size, expect_wh=clip.wh)[0]
        return clip.decoded


def paha_view(clip: ClipRecord, sample: dict[str, Any], idx: np.ndarray, audio, cfg: LoaderConfig,
              rng: random.Random, dry: bool = False, bank: ReferenceBank | None = None) -> dict[str, Any] | None:
    """The ``paha`` view of a sample's window ``idx``; None without pose data, or when the window
    covers the whole clip and no other clip of its identity is banked.

    The reference frame comes from another clip of the same identity when ``bank`` holds one
    (``reference_key`` names it), else from this clip's frames outside the window
    (``reference_key`` is the sample's own key): never a frame of the window being generated.

    Frames are made square without squashing: a clip cut with an ingest ``crop_box`` already is
    square; any other clip is centre-cropped to a square (``centre_square``, the rule generation
    applies to its reference image). Part boxes go through the same crop and scale: ``part_boxes``
    (W, P, 4) in view pixels (NaN where absent; not clipped to the frame, so a face track can run
    past the edge). A part whose box lies wholly outside the square is not in the view:
    ``part_present`` False, confidence 0.

    The sample is compact — ``video_u8`` (W, 3, S, S) and ``reference_u8`` (3, S, S) uint8, boxes
    but no masks — because it crosses the DataLoader's worker processes; ``expand_paha`` (applied by
    ``make_loader`` or on the training device by ``batch_stream``) adds ``video`` / ``reference`` in
    [0, 1] and ``part_masks`` (W, P, S, S), the boxes clipped to the frame."""
    import torch

    if layout.POSE not in sample:
        return None  # PAR needs part confidences
    W, S = len(idx), cfg.image_size
    key = sample["__key__"]
    other = bank.pick(clip.identity, key, rng) if bank is not None else None
    if bank is not None and layout.MP4 in sample:
        bank.add(clip.identity, key, sample[layout.MP4], clip.num_frames, (clip.width, clip.height), rng)
    ref = None
    if other is None:
        # the reference frame lies outside the window being generated (inside it, PSNR/SSIM against
        # the window would reward copying the reference); a clip the window covers whole has none
        outside = [f for f in range(clip.num_frames) if f < int(idx.min()) or f > int(idx.max())]
        if not outside:
            return None
        ref = rng.choice(outside)
    if dry:
        return {}
    if cfg.features:  # latents and audio features from the store: no decoding, no VAE, no audio backbone
        store = _feature_store(cfg.features)
        feats = store.load(key, sample)
        ref_latent = feats["latents"][ref] if other is None else store.load(other.key, {"mp4": other.mp4})["latents"][other.frame]
        media = {"latents": torch.from_numpy(feats["latents"][idx].astype(np.float32)),
                 "reference_latent": torch.from_numpy(ref_latent.astype(np.float32)),
                 "audio_features": torch.from_numpy(feats["audio"][idx].astype(np.float32)), "view_size": S}
    else:
        try:
            frames = decode_frames(sample[layout.MP4], idx.tolist() + ([ref] if other is None else []), S,
                                   expect_wh=(clip.width, clip.height))
            reference = frames[W] if other is None else bank.frame(other, S)
        except ValueError as e:
            raise ValueError(f"sample {key!r}: {e}") from None
        media = {"video_u8": torch.from_numpy(np.ascontiguousarray(frames[:W])).permute(0, 3, 1, 2),  # (W, 3, S, S) uint8
                 "reference_u8": torch.from_numpy(np.ascontiguousarray(reference)).permute(2, 0, 1)}
    # either pose.npz layout (docs/shard_format.md "Layout versions"); only the part arrays are decoded
    pose = decode_pose_member(sample[layout.POSE], keys=("part_confidences", "part_present", "part_boxes"))
    conf, present, boxes = pose["part_confidences"][idx], pose["part_present"][idx], pose["part_boxes"][idx]
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
    # compact: uint8 frames and boxes cross the DataLoader's shared memory; ``expand_paha`` makes the
    # float frames and the part masks after it (on the training device), ~10x fewer bytes per sample
    return {
        "__key__": key,
        **media,
        "frame_index": torch.from_numpy(idx.astype(np.int64)),  # (W,) the window's frames in the clip
        "reference_key": key if other is None else other.key,  # the clip the reference comes from
        "reference_frame": ref if other is None else other.frame,  # its frame there; never inside the window
        "audio": audio,
        "part_confidences": torch.from_numpy(conf),
        "part_present": torch.from_numpy(present),
        "part_boxes": torch.from_numpy(b),  # (W, P, 4) [x0, y0, x1, y1] in view pixels, NaN = absent
    }


@functools.lru_cache(maxsize=2)
def _feature_store(path: str):
    from trainers.features import FeatureStore

    return FeatureStore(path)


def masks_from_boxes(boxes, size: int):
    """(…, P, 4) [x0, y0, x1, y1] view-pixel boxes (NaN = absent) → (…, P, size, size) float masks:
    1 on the pixels of each box rounded to whole pixels and clipped to the frame, 0 elsewhere. Built
    on the boxes' device (a 512² × 5-part mask stack is 5 MB a frame: never worth shipping)."""
    import torch

    b = torch.nan_to_num(boxes.float(), nan=0.0).round().clamp(0, size)  # NaN → an empty box
    grid = torch.arange(size, device=boxes.device, dtype=torch.float32)
    cols = (grid >= b[..., 0:1]) & (grid < b[..., 2:3])  # (…, P, size)
    rows = (grid >= b[..., 1:2]) & (grid < b[..., 3:4])
    return (rows[..., :, None] & cols[..., None, :]).float()


def expand_paha(batch: dict[str, Any], device=None, non_blocking: bool = False) -> dict[str, Any]:
    """A compact ``paha`` sample or batch (``paha_view``) moved to ``device`` (default: where it is)
    with what the models read: ``video`` (…, W, 3, S, S) and ``reference`` (…, 3, S, S) as floats
    in [0, 1], ``part_masks`` (…, W, P, S, S) from ``part_boxes``. Anything else is left as it is
    (tensors moved). A batch without ``video_u8`` is returned unchanged."""
    import torch

    if "video_u8" not in batch and "latents" not in batch:
        return batch
    out = {k: (v.to(device, non_blocking=non_blocking) if device is not None and torch.is_tensor(v) else v)
           for k, v in batch.items() if k not in ("video_u8", "reference_u8")}
    if "latents" in batch:  # from a feature store: latents as they are, masks at the view's size
        size = batch["view_size"]
        out["part_masks"] = masks_from_boxes(out["part_boxes"], int(size.flatten()[0]) if torch.is_tensor(size) else int(size))
        return out
    video = batch["video_u8"].to(device, non_blocking=non_blocking) if device is not None else batch["video_u8"]
    ref = batch["reference_u8"].to(device, non_blocking=non_blocking) if device is not None else batch["reference_u8"]
    out["video"] = video.float() / 255.0
    out["reference"] = ref.float() / 255.0
    out["part_masks"] = masks_from_boxes(out["part_boxes"], video.shape[-1])
    return out
