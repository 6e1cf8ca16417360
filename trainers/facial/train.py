"""The training loop of trainer 1 — one function run by every Ray Train worker (or in-process).

    cnas train facial --config tiny --set data.urls='shards/cnas-{000000..000009}.tar'

Phase 1 (``train.binding_steps``) trains emotion binding and the motion autoencoder, phase 2
(``train.diffusion_steps``) the latent denoiser. Every ``train.checkpoint_every`` steps (and at
the end) a checkpoint is written; a restarted run — after a crash, a worker failure or just the
same command again — continues from the newest one at the same step with the same weights,
optimiser state, EMA, data position and random-number state.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

import torch

from trainers.checkpoint import restore_checkpoint, seed_everything
from trainers.data import LoaderConfig, batch_stream, make_loader
from trainers.optim import RunningMoments, accumulation, lr_at, set_lr
from trainers.reporting import Reporter
from trainers.session import current_session, launch, wrap_ddp
from trainers.validation import Validator
from trainers.weights import EMA, load_trainable, trainable_params, trainable_state

from .config import FacialConfig
from .diffusion import latent_valid
from .model import MOTION_DIM, FacialModel

log = logging.getLogger(__name__)


def loader_config(cfg: FacialConfig, urls: str | list[str] | None = None) -> LoaderConfig:
    """The facial view of the training shards (or of ``urls``, e.g. the validation shards)."""
    d = cfg.data
    if not d.urls:
        raise ValueError("data.urls is not set: give the training shards (paths, brace pattern or <split>.index.json)")
    return LoaderConfig(urls=urls or d.urls, view="facial", window_frames=d.window_frames, batch_size=d.batch_size,
                        num_workers=d.loader_workers, shuffle_buffer=d.shuffle_buffer, shuffle_shards=True,
                        seed=cfg.train.seed, default_emotion=d.default_emotion, min_valid_frames=d.min_valid_frames,
                        max_member_bytes=d.max_member_mb * 2**20,
                        min_emotion_confidence=d.min_emotion_confidence, emotion_text_language=d.emotion_text_language)


# weights loaded from a path are not saved in checkpoints (they are reloaded from the same path)
_FROZEN_PREFIXES = ("frontend.model.", "binding.text.model.")


def _frozen(model: FacialModel) -> tuple[str, ...]:
    return _FROZEN_PREFIXES if model.cfg.freeze_backbones else ("frontend.model.",)


def load_model_state(model: FacialModel, state: dict[str, torch.Tensor]) -> None:
    load_trainable(model, state, _frozen(model))


def measure_stats(model: FacialModel, lcfg: LoaderConfig, batches: int, device: torch.device, latent: bool = False) -> None:
    """Normalisation statistics measured once, over the first ``batches`` batches of this worker's
    data and summed over all workers (every worker ends with the same values): per-dimension motion
    mean and std (``latent=False``), or the latent scale at the start of phase 2 (``latent=True``).
    They are buffers of the model, so they travel with every checkpoint."""
    moments = RunningMoments(() if latent else MOTION_DIM)
    for batch in itertools.islice(make_loader(lcfg, epoch=0), batches):
        motion, valid = batch["motion"].to(device), batch["valid"].to(device)
        if latent:
            z = model.binding.autoencoder.encode(model.normalise(motion)).detach()
            keep = latent_valid(valid, z.shape[1])
            moments.add((z[keep] if keep.any() else z).reshape(-1))  # latent frames of fitted motion only
        else:
            moments.add(motion[valid] if valid.any() else motion.reshape(-1, MOTION_DIM))
    moments.all_reduce()
    if moments.n < 2:
        raise RuntimeError(f"no training window to measure normalisation statistics on ({lcfg.urls!r})")
    if latent:
        # one scale for all latent dimensions (Stable Diffusion's scaling factor): the pooled std
        mean, std = moments.mean_std()
        model.set_latent_scale(std)
    else:
        model.set_motion_stats(*moments.mean_std())


def train_facial(config: dict[str, Any]) -> dict[str, float]:
    """Train (or continue training) trainer 1 with ``config`` (a ``FacialConfig`` as a dict)."""
    cfg = FacialConfig.model_validate(config)
    t = cfg.train
    session = current_session(cfg.run)
    device = session.device
    seed_everything(t.seed)  # same initial weights on every worker (DDP also broadcasts rank 0's)
    model = FacialModel(cfg.model).to(device)
    model.binding.gather_negatives = session.world_size > 1 and t.gather_negatives
    binding, diffusion = wrap_ddp(model.binding, session), wrap_ddp(model.diffusion, session)
    opt1 = torch.optim.AdamW(trainable_params(model.binding), lr=t.lr, weight_decay=t.weight_decay)
    opt2 = torch.optim.AdamW(trainable_params(model.diffusion), lr=t.lr, weight_decay=t.weight_decay)
    ema = EMA(model.diffusion, t.ema_decay)
    seed_everything(t.seed * 1000 + session.rank)  # noise and condition dropout differ per worker
    step, position, restored = restore_checkpoint(session, {"model": (model, load_model_state),
                                                     "opt1": opt1, "opt2": opt2, "ema": ema})

    reporter = Reporter(session, t.log_every, t.checkpoint_every, t.total_steps, step if restored else None)
    validator = Validator(session, loader_config(cfg, cfg.data.val_urls) if cfg.data.val_urls else None, t,
                          cfg.model.noise_steps, t.seed, cfg.run.storage_path, cfg.run.name)
    lcfg = loader_config(cfg)
    if not bool(model.stats_ready):
        measure_stats(model, lcfg, t.stats_batches, device)
    stream = batch_stream(dataclasses.replace(lcfg, pin_memory=device.type == "cuda"), position, session.rank, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")

    def micro_step(batch: dict[str, Any], phase: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch of ``phase`` (1: binding + autoencoder, 2: latent denoiser)."""
        motion = batch["motion"].to(device)
        valid = batch["valid"].to(device)
        wave = batch["audio"].to(device)
        label = torch.as_tensor(batch["emotion_label"], device=device)
        intensity = torch.as_tensor(batch["emotion_intensity"], device=device)
        text = list(batch["emotion_text"])
        with autocast:
            feats = model.audio_features(wave, motion.shape[1])
        if phase == 1:
            model.train()
            with autocast:
                return binding(model.normalise(motion), valid, feats, text, label, intensity, t.temperature, t.velocity_weight, t.jaw_weight)
        model.binding.eval()
        model.diffusion.train()
        with torch.no_grad(), autocast:
            z0 = model.encode_motion(motion)
            emotion = model.mixed_emotion(feats, text, label, intensity)
        with autocast:
            return diffusion(z0.float(), feats, emotion.float(), model.schedule, cfg.model.p_drop_audio,
                             cfg.model.p_drop_emotion, latent_valid(valid, z0.shape[1]))

    last: dict[str, float] = {}
    while step < t.total_steps:
        phase = 1 if step < t.binding_steps else 2
        if phase == 2 and step == t.binding_steps:  # entering phase 2: fix the latent scale once
            measure_stats(model, lcfg, t.stats_batches, device, latent=True)
        module, opt, params = ((binding, opt1, trainable_params(model.binding)) if phase == 1 else
                               (diffusion, opt2, trainable_params(model.diffusion)))
        start, length = (0, t.binding_steps) if phase == 1 else (t.binding_steps, t.diffusion_steps)
        lr = lr_at(step - start, length, t.lr, t)
        set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), device=device)
        for _, context in accumulation(module, t.grad_accum):
            with context:
                loss, micro_terms = micro_step(next(stream), phase)
                (loss / t.grad_accum).backward()
            loss_sum += loss.detach() / t.grad_accum
            for k, v in micro_terms.items():
                terms[k] = terms.get(k, 0) + torch.as_tensor(v).detach() / t.grad_accum
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        if phase == 2:
            ema.update(model.diffusion)
        step += 1

        terms["loss"] = loss_sum
        terms["lr"] = torch.tensor(lr)
        validate = validator.due(step, t.total_steps)
        if validate:
            terms.update(validate_phase(model, validator, phase, cfg))

        def payload() -> dict[str, Any]:
            return {"model": trainable_state(model, _frozen(model)), "opt1": opt1.state_dict(), "opt2": opt2.state_dict(),
                    "ema": ema.shadow, "config": cfg.model_dump(mode="json")}

        logged = reporter.after_step(step, terms, {"phase": phase}, position, payload, force=validate)
        last = logged or last
        if validate and phase == 2:  # the generator is the phase-2 model: "best" compares phase-2 losses only
            validator.best.offer(step, logged["val/loss"], payload)
    reporter.close()
    session.close()
    return last


def validate_phase(model: FacialModel, validator: Validator, phase: int, cfg: FacialConfig) -> dict[str, torch.Tensor]:
    """Held-out metrics of the current phase: phase 1 the binding + autoencoder loss (no timesteps),
    phase 2 the denoiser's loss on the fixed timestep grid with the conditions always given."""
    was_training = model.training
    model.eval()

    def score(batch: dict[str, Any], tt: torch.Tensor) -> dict[str, torch.Tensor]:
        motion, valid, wave = batch["motion"], batch["valid"], batch["audio"]
        label, intensity = torch.as_tensor(batch["emotion_label"]).to(motion.device), torch.as_tensor(batch["emotion_intensity"]).to(motion.device)
        feats = model.audio_features(wave, motion.shape[1])
        if phase == 1:
            loss, terms = model.binding(model.normalise(motion), valid, feats, list(batch["emotion_text"]), label, intensity,
                                        cfg.train.temperature, cfg.train.velocity_weight, cfg.train.jaw_weight)
            return {"binding_loss": loss, "ae_recon": terms["ae/recon"]}
        z0 = model.encode_motion(motion)
        emotion = model.mixed_emotion(feats, list(batch["emotion_text"]), label, intensity)
        loss, _ = model.diffusion(z0, feats, emotion, model.schedule, 0.0, 0.0, latent_valid(valid, z0.shape[1]), tt)
        return {"loss": loss}

    # phase 1 has no timesteps; val/loss is the generator's (phase 2) loss only, so its curve is one quantity
    out = validator.run(score, ("binding_loss", "ae_recon") if phase == 1 else ("loss",), timesteps=[0] if phase == 1 else None)
    model.train(was_training)
    return out


def run_training(cfg: FacialConfig) -> Any:
    """Launch ``train_facial`` as configured (Ray Train workers, or in this process)."""
    return launch(train_facial, cfg.model_dump(mode="json"), cfg.run)
