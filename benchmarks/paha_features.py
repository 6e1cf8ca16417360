"""Trainer 2's steps per second with a feature store (``data.features``: latents and audio features
read, no video decoded, no VAE or audio backbone per step) against computing them on every step, in
the same command.

    .venv/bin/python benchmarks/paha_features.py [--steps 30] [--clips 8] [--frames 48]

Two settings: ``tiny`` as it is (32² frames, pixel-unshuffle latent, spectrogram), and ``tiny`` with a
diffusers ``AutoencoderKL`` in the production format (SD's four levels, 8× down; random weights: none
can be downloaded here) on 128² frames, where the VAE's share of a step is closer to the ``base`` one.
The store is built first (its time is reported); each mode then trains ``--steps`` steps in process,
twice, in the order computed, store, computed, store (this machine's speed drifts); a run's time over
its steps is reported, start-up included (the same in both modes, so the ratio is conservative).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402

from paha_data import write_paha_shards  # noqa: E402  (tests/paha_data.py: synthetic talking bodies)
from trainers.paha.config import load_paha_config  # noqa: E402
from trainers.paha.features import write_features  # noqa: E402
from trainers.paha.train import run_training  # noqa: E402


def sd_like_vae(folder: str) -> str:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(32, 64, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32,
                  layers_per_block=2, sample_size=128).save_pretrained(folder)
    return folder


def timed_run(sets: list[str], steps: int, out: str, name: str) -> float:
    cfg = load_paha_config("tiny", sets + [f"run.storage_path={out}", f"run.name={name}", f"train.steps={steps}",
                                           f"train.checkpoint_every={steps}", "train.val_every=0", "train.log_every=1000"])
    t0 = time.perf_counter()
    run_training(cfg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, size, extra in (("tiny (32², pixel latent, spectrogram)", 32, []),
                                   ("tiny + SD-format VAE (128², 8x down, 4 levels)", 128, ["vae"])):
            shards = write_paha_shards(__import__("pathlib").Path(d) / f"s{size}", clips=args.clips, frames=args.frames,
                                       size=size, per_shard=2)
            sets = [f"data.urls={json.dumps(shards)}", "run.use_ray=false", f"data.image_size={size}"]
            if extra:
                sets.append(f"model.vae={sd_like_vae(os.path.join(d, 'vae'))}")
            store = os.path.join(d, f"store{size}")
            t0 = time.perf_counter()
            write_features(load_paha_config("tiny", sets), store, echo=lambda m: None)
            build = time.perf_counter() - t0
            per = {"computed": [], "store": []}
            for i in range(2):
                for mode, more in (("computed", []), ("store", [f"data.features={store}"])):
                    per[mode].append(timed_run(sets + more, args.steps, os.path.join(d, "runs"), f"{mode}{size}_{i}") / args.steps)
            per = {k: sum(v) / len(v) for k, v in per.items()}
            rows.append((label, build, per["computed"], per["store"]))
    print(f"{args.steps} steps a run, mean of 2 runs a mode:\n")
    print(f"| setting | store built (s, {args.clips} clips × {args.frames} frames) | s/step computed | s/step from the store | steps/s ratio |")
    print("|---|---:|---:|---:|---:|")
    for label, build, a, b in rows:
        print(f"| {label} | {build:.1f} | {a:.3f} | {b:.3f} | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
