"""FLAME stage throughput: frames per second of DECA's encoder (ResNet-50, 224 px) and of the
FLAME layer, on CPU (and CUDA when available). Uses files built in the official layouts
(random weights: speed is what is measured, not accuracy).

    .venv/bin/python benchmarks/flame.py [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from model_builders import build_flame_files  # noqa: E402
from geometry.flame import load_flame_pickle, load_landmark_embedding  # noqa: E402
from geometry.flame_layer import FlameLayer  # noqa: E402
from stages.flame_model import load_deca_encoder  # noqa: E402


def bench(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vertices", type=int, default=5023, help="FLAME has 5023")
    args = ap.parse_args()
    assets = build_flame_files(tempfile.mkdtemp(), n_vertices=args.vertices)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.vertices} vertices")
    print("| device | DECA encoder frames/s | FLAME layer frames/s |")
    print("|---|---|---|")
    for dev in devices:
        enc = load_deca_encoder(assets["deca_checkpoint"], dev)
        flame = FlameLayer(load_flame_pickle(assets["flame_model"]), load_landmark_embedding(assets["landmark_embedding"])).to(dev)
        x = torch.rand(args.batch, 3, 224, 224, device=dev)
        p = [torch.zeros(args.batch, n, device=dev) for n in (100, 50, 6)]
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        with torch.no_grad():
            t_enc = bench(lambda: (enc(x), sync()), args.repeats)
            t_fl = bench(lambda: (flame(*p), sync()), args.repeats)
        print(f"| {dev} | {args.batch / t_enc:.1f} | {args.batch / t_fl:.0f} |")


if __name__ == "__main__":
    main()
