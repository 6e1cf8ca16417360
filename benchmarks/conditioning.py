"""Held-out curves and conditioning numbers of the tiny presets on CPU, on synthetic shards whose
answer is known (tests/facial_data.py: a clip's expression carries its emotion label's offset and
its jaw opens with the loudness of its audio; tests/paha_data.py: a drawn face whose mouth bar opens
with the loudness). Prints markdown for docs/facial.md and docs/paha.md.

    .venv/bin/python benchmarks/conditioning.py facial --binding-steps 500 --diffusion-steps 1000
    .venv/bin/python benchmarks/conditioning.py facial --data speech   # the second, differently made set
    .venv/bin/python benchmarks/conditioning.py paha --steps 200

The facial run also scores two controls built from the trained checkpoint: the denoiser's emotion
projection zeroed (the label can no longer steer) and its audio projection zeroed (the audio can no
longer drive the jaw). A report that did not fall for them would be measuring nothing.
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


def _curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("val/") for k in r)]


def facial(args, work: Path) -> None:
    from facial_data import write_facial_shards
    from trainers.facial.config import load_facial_config
    from trainers.facial.evaluate import FacialEvalOptions, ablated_checkpoint, evaluate
    from trainers.facial.probe import save_probe, train_probe
    from trainers.facial.train import run_training

    if args.data == "speech":  # the second set: real speech, other offsets, lengths and noise; test audio held out
        from facial_data import write_speech_facial_shards

        train = write_speech_facial_shards(work / "train", clips=args.clips, span_s=(0.0, 20.0), prefix="train")
        val = write_speech_facial_shards(work / "val", clips=8, seed=5, span_s=(0.0, 20.0), prefix="val")
        test = write_speech_facial_shards(work / "test", clips=24, seed=9, span_s=(20.0, 30.0), prefix="test")
        labelled = write_speech_facial_shards(work / "probe", clips=24, seed=13, span_s=(0.0, 20.0), prefix="probe")
    else:
        train = write_facial_shards(work / "train", clips=args.clips, frames=50)
        val = write_facial_shards(work / "val", clips=8, frames=50, seed=5)
        test = write_facial_shards(work / "test", clips=24, frames=50, seed=9)
        labelled = write_facial_shards(work / "probe", clips=24, frames=50, seed=13, prefix="probe")
    extra = list(args.set or [])
    cfg = load_facial_config("tiny", [f"data.urls={json.dumps(train)}", f"data.val_urls={json.dumps(val)}", "run.use_ray=false",
                                      f"run.storage_path={work / 'runs'}", f"train.binding_steps={args.binding_steps}",
                                      f"train.diffusion_steps={args.diffusion_steps}", f"train.val_every={args.val_every}",
                                      f"train.checkpoint_every={args.val_every}", f"train.log_every={args.val_every}", *extra])
    tic = time.perf_counter()
    run_training(cfg)
    train_s = time.perf_counter() - tic
    run_dir = work / "runs" / cfg.run.name
    # the probe is trained on other labelled clips than those it judges (eval refuses an overlap)
    probe, probe_report = train_probe(labelled, cfg.data.window_frames, steps=300)
    save_probe(probe, probe_report, work / "probe")
    options = FacialEvalOptions(max_clips=8, samples=2, steps=10, probe=str(work / "probe"))
    reports = {"trained (best)": evaluate(run_dir / "best", test, options),
               "emotion input cut": evaluate(ablated_checkpoint(run_dir / "best", work / "no_emotion", "emotion"), test, options),
               "audio input cut": evaluate(ablated_checkpoint(run_dir / "best", work / "no_audio", "audio"), test, options)}
    print(f"## facial tiny, {args.data} set: {len(train)} train shards, 8 val clips, 24 test clips; training {train_s:.0f} s on CPU"
          f"{'; ' + ' '.join(extra) if extra else ''}\n")
    print("| step | val/binding_loss | val/ae_recon | val/loss (denoiser) |\n|---|---|---|---|")
    for r in _curve(run_dir):
        cells = [r.get(k) for k in ("val/binding_loss", "val/ae_recon", "val/loss")]
        print(f"| {r['step']} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    print(f"\nbest: {json.loads((run_dir / 'best' / 'best.json').read_text())}")
    print(f"probe: held-out accuracy {probe_report['held_out_accuracy']:.3f} on {probe_report['held_out_windows']} windows, "
          f"chance {probe_report['chance']:.3f}\n")
    print("| model | label acc. guided | label acc. guidance off | chance | jaw–envelope r matched | swapped | ground truth |"
          " emotion similarity |\n|---|---|---|---|---|---|---|---|")
    for name, rep in reports.items():
        e, a = rep["conditioning"]["emotion"], rep["conditioning"]["audio"]
        print(f"| {name} | {e['guided_accuracy']:.3f} | {e['unguided_accuracy']:.3f} | {e['chance']:.3f} | {a['matched']:.3f} | "
              f"{a['swapped']:.3f} | {a['ground_truth']:.3f} | {rep['emotion_similarity']:.3f} |")


def paha(args, work: Path) -> None:
    from paha_data import write_paha_shards
    from trainers.paha.config import load_paha_config
    from trainers.paha.train import run_training

    train = write_paha_shards(work / "train", clips=args.clips, frames=24, size=64)
    val = write_paha_shards(work / "val", clips=4, frames=24, size=64, seed=5)
    for target in ("univdm", "pce"):
        cfg = load_paha_config("tiny", [f"data.urls={json.dumps(train)}", f"data.val_urls={json.dumps(val)}", "run.use_ray=false",
                                        f"run.storage_path={work / 'runs'}", f"train.target={target}", f"run.name=paha-{target}",
                                        f"train.steps={args.steps}", f"train.val_every={args.val_every}",
                                        f"train.checkpoint_every={args.val_every}", f"train.log_every={args.val_every}"])
        tic = time.perf_counter()
        run_training(cfg)
        print(f"\n## paha tiny {target}: {args.clips} train clips, 4 val clips; {time.perf_counter() - tic:.0f} s on CPU\n")
        keys = ("val/loss", "val/mse") if target == "univdm" else ("val/loss", "val/mouth_acc", "val/hands_acc")
        print("| step | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
        for r in _curve(work / "runs" / f"paha-{target}"):
            print(f"| {r['step']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trainer", choices=["facial", "paha"])
    p.add_argument("--binding-steps", type=int, default=500)
    p.add_argument("--diffusion-steps", type=int, default=1000)
    p.add_argument("--steps", type=int, default=200, help="paha: steps per target")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--data", choices=["synthetic", "speech"], default="synthetic",
                   help="facial: the first set (modulated tones) or the second (real speech, tests/facial_data.py)")
    p.add_argument("--set", action="append", help="facial: a config override (repeatable)")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cnas-conditioning-") as tmp:
        (facial if args.trainer == "facial" else paha)(args, Path(tmp))


if __name__ == "__main__":
    main()
