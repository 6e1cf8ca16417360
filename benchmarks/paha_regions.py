"""Where trainer 2's audio acts (issue 30 item 9): a tiny UniVDM trained on synthetic 64² shards, sampled
for held-out drawn people with their own audio. Prints the mouth's and the control regions' luminance–
audio correlation (``evaluate.region_conditioning``) at each audio guidance scale, for each setting
given, so an ablation is one command.

    .venv/bin/python benchmarks/paha_regions.py --steps 1500 \\
        --variant "before: audio everywhere, per-frame GroupNorm=model.audio_region=frame model.group_norm=frame" \\
        --variant "now (defaults)="

The shards (tests/paha_data.py) show a face disc whose mouth bar opens with the audio's loudness on a
flat background; the real forehead, torso and background never change (0.0 levels), so any
correlation there comes from the model. 16 training clips, 6 held-out clips (another seed: other
envelopes and hand positions), 10 DDIM steps, no PCE guidance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def run_variant(name: str, sets: list[str], train: list[str], test: list[str], work: Path, steps: int,
                scales: list[float]) -> list[str]:
    from trainers.paha.config import load_paha_config
    from trainers.paha.evaluate import PahaEvalOptions, evaluate
    from trainers.paha.train import run_training

    cfg = load_paha_config("tiny", [f"data.urls={json.dumps(train)}", "run.use_ray=false", f"run.storage_path={work}",
                                    "data.image_size=64", f"train.steps={steps}", f"train.checkpoint_every={steps}",
                                    "train.val_every=0", "train.log_every=500", *sets])
    tic = time.perf_counter()
    run_training(cfg)
    trained_s = time.perf_counter() - tic
    rows = []
    for scale in scales:
        rep = evaluate(str(work / cfg.run.name), test, PahaEvalOptions(max_clips=6, steps=10, hands=False, audio_scale=scale))
        g = rep["conditioning"]["regions"]

        def cell(region: str) -> str:
            r, lv = g["generated"].get(region), g["levels"].get(region)
            return f"{r:+.2f} ({lv:.2f})" if r is not None else f"still ({lv:.2f})"

        rows.append(f"| {name} | {scale:g} | {cell('mouth')} | {cell('forehead')} | {cell('torso')} | {cell('background')} "
                    f"| {', '.join(g['leaks']) or 'none'} | {rep['psnr']:.2f} |")
        print(rows[-1], flush=True)
    print(f"({name}: trained {steps} steps in {trained_s:.0f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.5])
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=SETTING SETTING ... (model settings as --set takes them; none: the defaults)")
    args = ap.parse_args()
    from paha_data import write_paha_shards

    work = Path(tempfile.mkdtemp(prefix="cnas-paha-regions-"))
    train = write_paha_shards(work / "train", clips=16, frames=24, size=64)
    test = write_paha_shards(work / "test", clips=6, frames=24, size=64, seed=11)
    print("| variant | audio scale | mouth r (levels) | forehead | torso | background | leaks (abs r ≥ 0.3) | PSNR |")
    print("|---|---|---|---|---|---|---|---|")
    for i, spec in enumerate(args.variant or ["defaults="]):
        name, _, sets = spec.partition("=")
        run_variant(name, sets.split(), train, test, work / f"v{i}", args.steps, args.scales)


if __name__ == "__main__":
    main()
