"""``cnas eval facial``: score a checkpoint on held-out shards.

For each clip window, ``samples`` sequences are generated from its audio and its emotion label,
then scored against the ground truth with the functions of ``metrics.py``. Vertex metrics (LVE,
FDD) need ``flame_model`` and ``flame_masks``; without them they are ``null`` with the reason.

Conditioning is measured by things that are not the model:

* **audio** — Pearson correlation between the generated jaw opening and the audio envelope
  (80–4000 Hz RMS per frame) with the clip's own audio (*matched*) and with another clip's audio
  (*swapped*, correlated against the first clip's envelope): a model that follows its audio has
  matched ≫ swapped ≈ 0; the ground truth's own correlation is the reference level.
* **emotion** (with ``probe``, an expression classifier trained separately by ``cnas train
  facial-probe``) — label-control accuracy: each clip is generated once per label the probe
  knows, and the probe must name the requested label; with emotion guidance off
  (``emotion_scale`` 0) the output no longer depends on the label and the accuracy falls to
  chance (1 / labels), reported beside it. ``emotion_similarity`` is the cosine between the probe's
  features of generated and ground-truth sequences.

    evaluate("runs/facial-tiny", "shards/test-{000000..000003}.tar", FacialEvalOptions(samples=2, steps=10, probe="runs/probe"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from schemas.settings import Settings
from trainers.conditioning import audio_envelope, mean_defined  # shared with trainer 2's conditioning report
from trainers.data import EMOTIONS, LoaderConfig, make_loader
from trainers.reporting import device_name

from . import metrics as M
from .generate import load_trained
from .probe import load_probe
from .probe import overlap as probe_overlap

JAW_OPEN = 50  # motion = 50 expression + jaw pose (3, axis-angle): the x rotation opens the mouth


class FacialEvalOptions(Settings):
    """How ``evaluate`` samples and scores (the ``cnas eval facial`` options)."""

    max_clips: int = Field(32, description="clips to score, each from its first window")
    samples: int = Field(3, ge=1, description="samples per clip (diversity needs 2+)")
    steps: int = Field(50, description="DDIM steps")
    audio_scale: float = Field(2.0, description="classifier-free guidance scale for audio")
    emotion_scale: float = Field(1.5, description="classifier-free guidance scale for emotion")
    seed: int = 0
    flame_model: str | None = Field(None, description="FLAME generic_model.pkl (for LVE/FDD)")
    flame_masks: str | None = Field(None, description="FLAME_masks.pkl (regions 'lips', 'forehead', 'eye_region')")
    device: str = Field("cpu", description="where to sample: cpu, cuda or cuda:<index>")
    probe: str | None = Field(None, description="expression probe (cnas train facial-probe): label control and emotion similarity")

    @model_validator(mode="after")
    def _flame_pair(self) -> "FacialEvalOptions":
        # checked here so a half-given pair fails before the checkpoint is loaded
        if bool(self.flame_model) != bool(self.flame_masks):
            raise ValueError("vertex metrics need both --flame-model and --flame-masks")
        return self


def _examples(urls: str | list[str], cfg, max_clips: int) -> list[dict[str, Any]]:
    lcfg = LoaderConfig(urls=urls, view="facial", window_frames=cfg.data.window_frames, random_window=False,
                        default_emotion=cfg.data.default_emotion, min_valid_frames=cfg.data.min_valid_frames,
                        max_member_bytes=cfg.data.max_member_mb * 2**20,
                        min_emotion_confidence=cfg.data.min_emotion_confidence, emotion_text_language=cfg.data.emotion_text_language)
    out = []
    for ex in make_loader(lcfg):
        if len(out) >= max_clips:
            break
        out.append(ex)
    return out


def evaluate(checkpoint: str | Path, urls: str | list[str], options: FacialEvalOptions = FacialEvalOptions()) -> dict[str, Any]:
    """Score the checkpoint (a run folder, one ``step_*`` or ``best``) on the clips of ``urls``: a
    report of mean metrics, ``null`` for those that could not be measured (with ``notes``)."""
    samples, device = options.samples, options.device
    model, cfg, step = load_trained(checkpoint, device=device)
    probe, probe_report = load_probe(options.probe, device) if options.probe else (None, None)
    W = cfg.data.window_frames
    flame = None
    if options.flame_model:  # the options ensure that the masks come with it
        from geometry.flame import load_flame_pickle
        from geometry.flame_layer import FlameLayer

        flame = FlameLayer(load_flame_pickle(options.flame_model))
        lips = M.load_region_indices(options.flame_masks, ("lips",))
        upper = M.load_region_indices(options.flame_masks, ("forehead", "eye_region"))
    examples = _examples(urls, cfg, options.max_clips)
    if not examples:
        raise ValueError(f"no clip in {urls!r} has a {W}-frame window with FLAME parameters")
    probe_note = None
    if probe is not None:
        seen = probe_overlap(probe_report, [ex["__key__"] for ex in examples])
        if seen:  # a judge that learned these very clips would flatter any generator
            raise ValueError(f"the expression probe {options.probe} was trained on {len(seen)} of the {len(examples)} clips "
                             f"being evaluated (e.g. {', '.join(seen[:3])}): train it on clips outside the evaluated split "
                             "(cnas train facial-probe --data release/val.index.json, or a labelled corpus from cnas adapt mead)")
        if seen is None:
            probe_note = "probe: saved without its list of training clips, so its disjointness from these clips was not checked"
    g = torch.Generator().manual_seed(options.seed)

    def generate(audio: torch.Tensor, emotion: torch.Tensor, emotion_scale: float) -> np.ndarray:
        noise = torch.randn((1, W // 2, cfg.model.latent_dim), generator=g).to(device)
        return model.generate(audio[None].to(device), emotion, W, options.steps, options.audio_scale, emotion_scale, noise)[0].cpu().numpy()

    def label_embedding(label: int, intensity: int) -> torch.Tensor:
        return model.emotion_embedding(label=torch.tensor([label], device=device), intensity=torch.tensor([intensity], device=device))

    rows: dict[str, list] = {k: [] for k in ("param_mse", "diversity", "lve", "fdd", "emotion_similarity", "jaw_matched",
                                             "jaw_swapped", "jaw_ground_truth")}
    envelopes = [audio_envelope(ex["audio"].numpy(), W) for ex in examples]
    for i, ex in enumerate(examples):
        gt = ex["motion"].numpy()
        valid = ex["valid"].numpy()  # frames with a FLAME fit: only those are ground truth
        emo = label_embedding(ex["emotion_label"], ex["emotion_intensity"])
        gen = np.stack([generate(ex["audio"], emo, options.emotion_scale) for _ in range(samples)])
        rows["param_mse"].append(float(((gen[:, valid] - gt[None, valid]) ** 2).mean()))
        if probe is not None:
            with torch.no_grad():
                fg = probe.features(torch.from_numpy(gen).to(device)).cpu().numpy()
                ft = probe.features(torch.from_numpy(gt)[None].to(device)).cpu().numpy()
            rows["emotion_similarity"].append(M.emotion_similarity(fg, np.repeat(ft, len(fg), axis=0)))
        # audio control: jaw opening (FLAME jaw pose, x axis) against the envelope of the audio it was given or not
        rows["jaw_ground_truth"].append(M.envelope_correlation(gt[valid, JAW_OPEN], envelopes[i][valid]))
        rows["jaw_matched"].append(M.envelope_correlation(gen[0, :, JAW_OPEN], envelopes[i]))
        if len(examples) > 1:
            other = examples[(i + 1) % len(examples)]["audio"]
            rows["jaw_swapped"].append(M.envelope_correlation(generate(other, emo, options.emotion_scale)[:, JAW_OPEN], envelopes[i]))
        if flame is not None:
            from .render import flame_vertices

            gv = np.stack([flame_vertices(flame, s) for s in gen])
            tv = flame_vertices(flame, gt)
            template = flame.v_template.numpy()
            rows["lve"].append(float(np.mean([M.lip_vertex_error(v[valid], tv[valid], lips) for v in gv])))
            rows["fdd"].append(float(np.mean([M.upper_face_dynamics_deviation(v[valid], tv[valid], template, upper) for v in gv])))
            if samples > 1:
                rows["diversity"].append(M.diversity(gv))
        elif samples > 1:
            rows["diversity"].append(M.diversity(gen))
    notes: list[str] = []
    out: dict[str, Any] = {"checkpoint_step": step, "device": device_name(torch.device(device)), "clips": len(examples),
                           "samples_per_clip": samples, "window_frames": W,
                           "diversity_space": "vertices" if flame is not None else "flame_parameters"}
    for k in ("param_mse", "diversity", "lve", "fdd"):
        out[k] = mean_defined(rows[k])
    if flame is None:
        notes.append("lve/fdd need --flame-model and --flame-masks (FLAME_masks.pkl with 'lips', 'forehead', 'eye_region')")
    audio_report = {"measure": "Pearson r of generated jaw opening vs the 80-4000 Hz audio envelope",
                    "matched": mean_defined(rows["jaw_matched"]), "swapped": mean_defined(rows["jaw_swapped"]),
                    "ground_truth": mean_defined(rows["jaw_ground_truth"]), "chance": 0.0}
    if len(examples) < 2:
        notes.append("swapped audio needs at least two clips")
    out["conditioning"] = {"audio": audio_report}
    if probe is not None:
        out["emotion_similarity"] = mean_defined(rows["emotion_similarity"])
        out["emotion_similarity_features"] = "expression probe (trainers/facial/probe.py), not the model's binding space"
        out["conditioning"]["emotion"] = label_control(examples, probe, probe_report, generate, label_embedding, options)
        if probe_note:
            notes.append(probe_note)
    else:
        out["emotion_similarity"] = None
        notes.append("emotion_similarity and label-control accuracy need --probe (cnas train facial-probe)")
    out["notes"] = notes
    return out


def label_control(examples: list[dict[str, Any]], probe, probe_report: dict[str, Any], generate, label_embedding,
                  options: FacialEvalOptions) -> dict[str, Any]:
    """Label-control accuracy under the probe: every clip generated for every label the probe knows,
    with the evaluation's emotion guidance and with it off (``emotion_scale`` 0)."""
    labels = [EMOTIONS.index(name) for name in probe_report["labels"]]
    hits = {"guided": [], "unguided": []}
    for ex in examples:
        for label in labels:
            emo = label_embedding(label, 2)
            for mode, scale in (("guided", options.emotion_scale), ("unguided", 0.0)):
                motion = torch.from_numpy(generate(ex["audio"], emo, scale)).to(probe.mean.device)
                with torch.no_grad():
                    predicted = int(probe(motion[None]).argmax(-1))
                hits[mode].append(predicted == label)
    return {"measure": "share of sequences the expression probe classifies as the requested label",
            "labels": probe_report["labels"], "guided_accuracy": float(np.mean(hits["guided"])),
            "unguided_accuracy": float(np.mean(hits["unguided"])), "chance": 1 / len(labels),
            "emotion_scale": options.emotion_scale, "probe_held_out_accuracy": probe_report["held_out_accuracy"]}


_INPUT_PROJECTIONS = {"emotion": "emotion_proj", "audio": "audio_proj"}


def ablated_checkpoint(checkpoint: str | Path, out: str | Path, cut: str) -> Path:
    """A copy of a checkpoint with one condition cut from the denoiser (``cut``: ``emotion`` or
    ``audio``; its input projection zeroed, EMA included) — the control for the conditioning report:
    the same weights otherwise, so the numbers it must fail are the only thing that changes."""
    from trainers.checkpoint import find_checkpoint, load_checkpoint_file

    if cut not in _INPUT_PROJECTIONS:
        raise ValueError(f"cut must be one of {sorted(_INPUT_PROJECTIONS)}, not {cut!r}")
    state = load_checkpoint_file(find_checkpoint(checkpoint) / "model.pt")
    name = _INPUT_PROJECTIONS[cut]
    for tensors, prefix in ((state["model"], f"diffusion.denoiser.{name}."), (state.get("ema", {}), f"denoiser.{name}.")):
        for k in tensors:
            if k.startswith(prefix):
                tensors[k] = torch.zeros_like(tensors[k])
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "model.pt")
    return folder

