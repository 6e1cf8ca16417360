"""Training step time and peak memory of a trainer preset, in-process (no Ray), on synthetic shards
in the shard format. On a GPU it also reports peak CUDA memory.

    .venv/bin/python benchmarks/train_step.py facial --preset tiny --steps 40
    .venv/bin/python benchmarks/train_step.py facial --preset base --steps 6 --set data.batch_size=4
    .venv/bin/python benchmarks/train_step.py paha --preset tiny --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bench_facial(preset: str, steps: int, sets: list[str]) -> dict:
    import torch

    from facial_data import write_facial_shards
    from trainers.facial.config import load_facial_config
    from trainers.facial.model import FacialModel
    from trainers.facial.train import train_facial

    d = Path(tempfile.mkdtemp(prefix="cnas-trainbench-"))
    probe = load_facial_config(preset, sets)
    frames = max(probe.data.window_frames, 50)
    urls = write_facial_shards(d / "shards", clips=max(8, probe.data.batch_size * 2), frames=frames, per_shard=8)
    half = max(1, steps // 2)
    base = [f"data.urls={json.dumps(urls)}", "run.use_ray=false", f"run.storage_path={d / 'runs'}", "run.num_workers=1",
            f"train.checkpoint_every={10**9}", f"train.log_every={half}", "data.loader_workers=0"]
    use_gpu = torch.cuda.is_available()
    out: dict = {"preset": preset, "device": torch.cuda.get_device_name() if use_gpu else "cpu",
                 "trainable_params": _count(FacialModel(probe.model))}
    for phase, counts in (("binding", (steps, 0)), ("diffusion", (0, steps))):
        cfg = load_facial_config(preset, sets + base + [f"run.use_gpu={use_gpu}", f"train.binding_steps={counts[0]}",
                                                        f"train.diffusion_steps={counts[1]}", f"run.name=bench-{phase}"])
        if use_gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        metrics = train_facial(cfg.model_dump(mode="json"))
        wall = time.perf_counter() - t0
        out[phase] = {"steps": steps, "wall_s": round(wall, 2), "steps_per_s_last_half": round(metrics["steps_per_s"], 2),
                      "batch": cfg.data.batch_size, "window_frames": cfg.data.window_frames}
        if use_gpu:
            out[phase]["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def bench_paha(preset: str, steps: int, sets: list[str]) -> dict:
    import torch

    from paha_data import write_paha_shards
    from trainers.paha.config import load_paha_config
    from trainers.paha.model import ClassifierModel, VideoModel
    from trainers.paha.train import train_paha

    d = Path(tempfile.mkdtemp(prefix="cnas-trainbench-"))
    probe = load_paha_config(preset, sets)
    size = probe.data.image_size
    urls = write_paha_shards(d / "shards", clips=max(8, probe.data.batch_size * 2), frames=max(probe.data.window_frames, 24),
                             size=max(size, 64), per_shard=8)
    use_gpu = torch.cuda.is_available()
    out: dict = {"preset": preset, "device": torch.cuda.get_device_name() if use_gpu else "cpu",
                 "trainable_params": {"univdm": _count(VideoModel(probe.model)), "pce": _count(ClassifierModel(probe.model))}}
    for target in ("univdm", "pce"):
        cfg = load_paha_config(preset, sets + [f"data.urls={json.dumps(urls)}", "run.use_ray=false", f"run.storage_path={d / 'runs'}",
                                               "run.num_workers=1", f"run.use_gpu={use_gpu}", f"train.target={target}",
                                               f"train.steps={steps}", f"train.checkpoint_every={10**9}",
                                               f"train.log_every={max(1, steps // 2)}", f"run.name=bench-{target}"])
        if use_gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        metrics = train_paha(cfg.model_dump(mode="json"))
        out[target] = {"steps": steps, "wall_s": round(time.perf_counter() - t0, 2),
                       "steps_per_s_last_half": round(metrics["steps_per_s"], 2), "batch": cfg.data.batch_size,
                       "window_frames": cfg.data.window_frames, "image_size": size}
        if use_gpu:
            out[target]["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trainer", choices=["facial", "paha"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    bench = bench_facial if args.trainer == "facial" else bench_paha
    print(json.dumps(bench(args.preset, args.steps, args.sets), indent=2))


if __name__ == "__main__":
    main()
