"""``cnas train|generate|eval`` sub-commands (registered by ``cnas.cli``; imports are lazy so
the ingestion commands do not load the trainers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--config", default=default, help=f"preset name (tiny, base) or YAML file (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set data.urls=shards/{000000..000009}.tar (repeatable)")
    p.add_argument("--address", help="Ray cluster address (default: an embedded local Ray)")


def _train(args, load_config, run_training) -> int:
    overrides = list(args.overrides) + ([f"run.address={args.address}"] if args.address else [])
    cfg = load_config(args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    result = run_training(cfg)
    metrics = getattr(result, "metrics", result)
    print(f"trained {cfg.run.name} to step {metrics.get('step') if metrics else '?'}; "
          f"checkpoints under {Path(cfg.run.storage_path) / cfg.run.name}")
    return 0


def cmd_train_facial(args) -> int:
    from trainers.facial.config import load_facial_config
    from trainers.facial.train import run_training

    return _train(args, load_facial_config, run_training)


def cmd_train_facial_probe(args) -> int:
    from trainers.facial.probe import save_probe, train_probe

    probe, report = train_probe(args.data, args.window, val_urls=args.val_data, steps=args.steps, seed=args.seed)
    path = save_probe(probe, report, args.out)
    print(f"wrote {path}: held-out accuracy {report['held_out_accuracy']:.3f} on {report['held_out_windows']} windows "
          f"({report['held_out']}), chance {report['chance']:.3f}")
    return 0


def cmd_train_paha(args) -> int:
    from trainers.paha.config import load_paha_config
    from trainers.paha.train import run_training

    return _train(args, load_paha_config, run_training)


def cmd_features_paha(args) -> int:
    from trainers.paha.config import load_paha_config
    from trainers.paha.features import write_features

    cfg = load_paha_config(args.config, list(args.overrides))
    got = write_features(cfg, args.out, device=_device(args.device))
    print(f"features of {got['computed']} clips computed, {got['kept']} kept from before: {got['index']} "
          f"(train with --set data.features={args.out})")
    return 0


def cmd_generate_paha(args) -> int:
    from trainers.paha.generate import generate_to_file

    out = generate_to_file(args.checkpoint, args.ref, args.audio, args.out, args.guidance, args.pce_checkpoint, args.regions,
                           device=_device(args.device), steps=args.steps, audio_scale=args.audio_scale,
                           guidance_scale=args.guidance_scale, seed=args.seed)
    print(f"wrote {out}")
    return 0


def _report(report: dict, out: str | None) -> int:
    text = json.dumps(report, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
    return 0


def cmd_eval_paha(args) -> int:
    from trainers.paha.evaluate import PahaEvalOptions, evaluate

    options = PahaEvalOptions(max_clips=args.max_clips, frames=args.frames, steps=args.steps, audio_scale=args.audio_scale,
                              guidance=args.guidance, pce_checkpoint=args.pce_checkpoint, guidance_scale=args.guidance_scale,
                              seed=args.seed, fid_weights=args.fid_weights, fvd_weights=args.fvd_weights,
                              lpips_weights=args.lpips_weights, syncnet_weights=args.syncnet_weights,
                              allow_few_samples=args.allow_few_samples, hands=not args.no_hands,
                              conditioning=not args.no_conditioning, compare_guidance=args.compare_guidance,
                              min_face_share=args.min_face_share, device=_device(args.device))
    return _report(evaluate(args.checkpoint, args.data, options), args.out)


def cmd_generate_facial(args) -> int:
    import torch

    from trainers.facial.generate import emotion_from_args, generate_motion, load_trained, read_audio, save_sequence

    model, cfg, step = load_trained(args.checkpoint, device=_device(args.device))
    torch.manual_seed(args.seed)
    wave = read_audio(args.audio)
    emotion = emotion_from_args(model, args.emotion_text, args.emotion_label, args.intensity, args.emotion_audio)
    motion = generate_motion(model, wave, emotion, cfg.data.window_frames, args.seed, args.steps, args.audio_scale,
                             args.emotion_scale)
    info = {"checkpoint_step": step, "audio": str(args.audio), "emotion_text": args.emotion_text,
            "emotion_label": args.emotion_label, "intensity": args.intensity, "emotion_audio": args.emotion_audio,
            "seed": args.seed, "audio_scale": args.audio_scale, "emotion_scale": args.emotion_scale}
    save_sequence(args.out, motion, info)
    print(f"wrote {args.out}: {len(motion)} frames at 25 fps")
    if args.flame_model:
        from geometry.flame import load_flame_pickle
        from geometry.flame_layer import FlameLayer
        from trainers.facial.render import flame_vertices, write_preview

        flame = FlameLayer(load_flame_pickle(args.flame_model))
        preview = Path(args.preview or Path(args.out).with_suffix(".mp4"))
        write_preview(preview, flame_vertices(flame, motion), flame.faces.numpy(), 25.0, audio=args.audio)
        print(f"wrote mesh preview {preview}")
    elif args.preview:
        raise ValueError("--preview needs --flame-model (FLAME 2020 generic_model.pkl; see docs/flame.md)")
    return 0


def cmd_eval_facial(args) -> int:
    from trainers.facial.evaluate import FacialEvalOptions, evaluate

    options = FacialEvalOptions(max_clips=args.max_clips, samples=args.samples, steps=args.steps, audio_scale=args.audio_scale,
                                emotion_scale=args.emotion_scale, seed=args.seed, flame_model=args.flame_model,
                                flame_masks=args.flame_masks, device=_device(args.device), probe=args.probe)
    return _report(evaluate(args.checkpoint, args.data, options), args.out)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder (newest step_* is used) or one step_* folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to sample (auto: a GPU when there is one)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--audio-scale", type=float, default=2.0, help="classifier-free guidance scale for audio")
    p.add_argument("--emotion-scale", type=float, default=1.5, help="classifier-free guidance scale for emotion")
    p.add_argument("--seed", type=int, default=0)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    return name


def _paha_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to sample (auto: a GPU when there is one)")
    p.add_argument("--checkpoint", required=True, help="UniVDM run folder (newest step_*) or one step_* folder")
    p.add_argument("--pce-checkpoint", help="PCE run folder (needed for --guidance sg|dg)")
    p.add_argument("--guidance", choices=["none", "sg", "dg"], default="none", help="PCE classifier guidance")
    p.add_argument("--guidance-scale", type=float, default=0.05, help="PCE guidance step, a share of the latents' spread")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--audio-scale", type=float, default=3.5, help="classifier-free guidance scale for audio")
    p.add_argument("--seed", type=int, default=0)


def _models(sub, command: str, help: str):
    return sub.add_parser(command, help=help).add_subparsers(dest="model", required=True, metavar="MODEL")


def add_commands(sub) -> None:
    models = _models(sub, "train", "train a model on CNAS shards (Ray Train)")
    f = models.add_parser("facial", help="trainer 1: FLAME-space facial animation (emotion binding + latent diffusion)")
    _config_args(f, "tiny")
    f.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    f.set_defaults(func=cmd_train_facial)
    f = models.add_parser("facial-probe", help="an expression classifier on labelled FLAME sequences (eval facial --probe; the ingest's emotion stage)")
    f.add_argument("--data", required=True, help="labelled held-out shards (e.g. release/test.index.json)")
    f.add_argument("--val-data", help="shards to measure the probe's own accuracy on (default: every fifth clip of --data)")
    f.add_argument("--out", required=True, help="folder for probe.pt and probe.json")
    f.add_argument("--window", type=int, default=24, help="frames per window (use the facial model's data.window_frames)")
    f.add_argument("--steps", type=int, default=400)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_train_facial_probe)
    f = models.add_parser("paha", help="trainer 2: PAHA upper-body video diffusion (train.target=univdm or pce)")
    _config_args(f, "tiny")
    f.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    f.set_defaults(func=cmd_train_paha)

    models = _models(sub, "features", "compute a trainer's frozen inputs once into a feature store")
    f = models.add_parser("paha", help="VAE latents of every frame and audio-backbone features of every clip (data.features)")
    f.add_argument("--config", default="tiny", help="preset name (tiny, base) or YAML file: its model.vae, "
                   "model.audio_backbone and data.image_size decide the features (default: tiny)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set data.urls=release/train.index.json (repeatable)")
    f.add_argument("--out", required=True, help="the store folder (added to when it exists with the same settings)")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the VAE and audio model run")
    f.set_defaults(func=cmd_features_paha)

    models = _models(sub, "generate", "sample from a trained model")
    f = models.add_parser("facial", help="FLAME expression + jaw sequence for an audio file and an emotion")
    _sampling_args(f)
    f.add_argument("--audio", required=True, help="speech audio (any format ffmpeg reads)")
    emo = f.add_mutually_exclusive_group(required=True)
    emo.add_argument("--emotion-text", help='e.g. "a very angry face"')
    emo.add_argument("--emotion-label", help="neutral, happy, sad, angry, surprised, fear, disgusted, contempt")
    emo.add_argument("--emotion-audio", help="an audio file whose emotion to follow")
    f.add_argument("--intensity", type=int, default=1, help="with --emotion-label: 1-3")
    f.add_argument("--out", required=True, help="output .npz (exp, pose, valid, fps)")
    f.add_argument("--flame-model", help="FLAME generic_model.pkl: also render a mesh preview video")
    f.add_argument("--preview", help="preview mp4 path (default: OUT with .mp4)")
    f.set_defaults(func=cmd_generate_facial)
    f = models.add_parser("paha", help="upper-body video for a reference image and an audio file")
    _paha_sampling_args(f)
    f.add_argument("--ref", required=True, help="reference image (centre-cropped to a square)")
    f.add_argument("--audio", required=True, help="speech audio (any format ffmpeg reads)")
    f.add_argument("--regions", help='JSON {"mouth": [x0,y0,x1,y1], "hands": [...]} in reference pixels (default: MediaPipe)')
    f.add_argument("--out", required=True, help="output mp4")
    f.set_defaults(func=cmd_generate_paha)

    models = _models(sub, "eval", "score a trained model on held-out shards")
    f = models.add_parser("facial", help="LVE, FDD, diversity, audio and emotion control, emotion similarity (with --probe)")
    _sampling_args(f)
    f.add_argument("--data", required=True, help="held-out shards (paths, brace pattern or <split>.index.json)")
    f.add_argument("--max-clips", type=int, default=32)
    f.add_argument("--samples", type=int, default=3, help="samples per clip (diversity needs 2+)")
    f.add_argument("--flame-model", help="FLAME generic_model.pkl (for LVE/FDD)")
    f.add_argument("--flame-masks", help="FLAME_masks.pkl (regions 'lips', 'forehead', 'eye_region')")
    f.add_argument("--probe", help="expression probe folder (cnas train facial-probe): label control, emotion similarity")
    f.add_argument("--out", help="also write the report here (JSON)")
    f.set_defaults(func=cmd_eval_facial)
    f = models.add_parser("paha", help="PSNR, SSIM, LPIPS, FID, FVD, Sync-C/D, hand keypoint confidence/variance, audio conditioning")
    _paha_sampling_args(f)
    f.add_argument("--data", required=True, help="held-out shards with pose.npz")
    f.add_argument("--max-clips", type=int, default=16)
    f.add_argument("--frames", type=int, help="frames per clip (default: the training window)")
    f.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth")
    f.add_argument("--fvd-weights", help="i3d_torchscript.pt")
    f.add_argument("--lpips-weights", help="torchvision alexnet state dict (alexnet-owt-7be5be79.pth)")
    f.add_argument("--syncnet-weights", help="syncnet_v2.model of syncnet_python (the file sync.syncnet_model names)")
    f.add_argument("--allow-few-samples", action="store_true",
                   help="report FID/FVD from fewer samples than feature dimensions (≤ 2048 frames, ≤ 400 clips), flagged unreliable")
    f.add_argument("--no-hands", action="store_true", help="skip the MediaPipe hand keypoint metrics")
    f.add_argument("--no-conditioning", action="store_true",
                   help="skip the audio conditioning report (MediaPipe mouth opening vs the audio envelope, matched vs "
                        "swapped audio), which generates each clip a second time")
    f.add_argument("--compare-guidance", action="store_true",
                   help="generate every clip with each PCE guidance mode (none, sg, dg) from the same seed and compare "
                        "them by Sync-C/D and the mouth measure, not by the PCE classifier (needs --pce-checkpoint)")
    f.add_argument("--min-face-share", type=float, default=0.5,
                   help="share of frames where MediaPipe must find a face for the mouth measure (default 0.5)")
    f.add_argument("--out", help="also write the report here (JSON)")
    f.set_defaults(func=cmd_eval_paha)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `cnas` command")
