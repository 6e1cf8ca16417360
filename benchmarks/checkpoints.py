"""Checkpoint save and restore times of the facial ``base`` model (CPU): in-process, and under Ray
Train with 2 workers with the upload asynchronous (now) and synchronous (before). The times are the
trainer's own ``checkpoint/save_s`` (how long the step was held) and ``restore_s`` (fetch + load of
the resumed run) from ``metrics.jsonl``.

    .venv/bin/python benchmarks/checkpoints.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from facial_data import write_facial_shards  # noqa: E402
from trainers.facial.config import load_facial_config  # noqa: E402
from trainers.facial.train import run_training  # noqa: E402


def times(run: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (run / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    return ([round(r["checkpoint/save_s"], 2) for r in rows if "checkpoint/save_s" in r],
            [r["restore_s"] for r in rows if r.get("event") == "resumed"])


def main() -> None:
    import ray

    d = Path(tempfile.mkdtemp(prefix="cnas-ckpt-"))
    shards = write_facial_shards(d / "shards", clips=8, frames=120)  # base windows are 100 frames
    ray.init(num_cpus=2, include_dashboard=False)
    print("| run | step held per checkpoint (s) | restore (s) |\n|---|---|---|")
    for name, sets in (("in-process", ["run.use_ray=false", "run.num_workers=1"]),
                       ("Ray Train, 2 workers, async upload", ["run.num_workers=2", "run.cpus_per_worker=1", "run.async_checkpoints=true"]),
                       ("Ray Train, 2 workers, sync upload", ["run.num_workers=2", "run.cpus_per_worker=1", "run.async_checkpoints=false"])):
        run_name = name.split(",")[0].replace(" ", "-").lower() + ("-sync" if "sync upload" in name and "async" not in name else "")
        for steps in (2, 3):  # the second command resumes from the first's last checkpoint
            run_training(load_facial_config("base", [
                f"data.urls={json.dumps(shards)}", "run.use_gpu=false", f"run.storage_path={d / 'runs'}", f"run.name={run_name}",
                *sets, "data.batch_size=2", "data.loader_workers=0", "data.shuffle_buffer=4", "train.binding_steps=1",
                f"train.diffusion_steps={steps}", "train.checkpoint_every=1", "train.log_every=1", "train.stats_batches=2",
                "train.val_every=0", "train.warmup_steps=0"]))
        save, restore = times(d / "runs" / run_name)
        print(f"| {name} | {', '.join(map(str, save))} | {', '.join(f'{r:.2f}' for r in restore)} |")
    step = max((d / "runs").glob("**/step_*4"), key=lambda p: p.name)
    print(f"checkpoint size: {sum(f.stat().st_size for f in step.rglob('*') if f.is_file()) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
