"""The training loop of trainer 2 — UniVDM or the PCE classifiers (``train.target``), run by every
Ray Train worker (or in-process), resumable exactly like trainer 1 (see ``trainers/checkpoint.py``).

    cnas train paha --config tiny --set data.urls=... --set train.target=univdm
    cnas train paha --config tiny --set data.urls=... --set train.target=pce --set run.name=paha-tiny-pce
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from trainers.checkpoint import restore_checkpoint, seed_everything
from trainers.data import LoaderConfig, batch_stream
from trainers.optim import accumulation, lr_at, set_lr
from trainers.reporting import Reporter
from trainers.session import current_session, launch, wrap_ddp
from trainers.validation import Validator
from trainers.weights import EMA, load_trainable, trainable_params, trainable_state

from .config import BEFORE_SETTINGS, PahaConfig, with_settings_of_before
from .model import ClassifierModel, VideoModel

log = logging.getLogger(__name__)
# weights loaded from a path are reloaded from it, not stored in checkpoints
_FROZEN_PREFIXES = ("frontend.model.", "latent.vae.")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    load_trainable(model, state, _FROZEN_PREFIXES)


def build_model(cfg: PahaConfig) -> torch.nn.Module:
    if cfg.train.target == "pce":
        return ClassifierModel(cfg.model)
    model = VideoModel(cfg.model)
    if cfg.model.init_2d:
        from pathlib import Path

        from .init2d import check_fraction, load_init_2d

        result = load_init_2d(model.unet, cfg.model.init_2d)
        check_fraction(result, cfg.train.min_init_fraction)  # a wrong folder must not train from scratch silently
        log.info("init_2d: %s", result.summary())
        # recorded with the run (metrics.jsonl "started" event), not only in a log a cluster may drop
        model.init_2d_record = {"source": result.source, "fraction": result.fraction, "initialised": result.initialised,
                                "total": result.total}
        if Path(cfg.model.init_2d).is_dir() and cfg.model.prediction != "eps":
            log.info("init_2d: SD 1.5 predicts ε, model.prediction is %s: the output layers relearn their target",
                     cfg.model.prediction)
    return model


def loader_config(cfg: PahaConfig, urls: str | list[str] | None = None) -> LoaderConfig:
    """The paha view of the training shards (or of ``urls``, e.g. the validation shards, which are
    computed, not read from ``data.features``)."""
    d = cfg.data
    if not d.urls:
        raise ValueError("data.urls is not set: give the training shards (paths, brace pattern or <split>.index.json)")
    return LoaderConfig(urls=urls or d.urls, view="paha", window_frames=d.window_frames, image_size=d.image_size,
                        batch_size=d.batch_size, num_workers=d.loader_workers, shuffle_buffer=d.shuffle_buffer,
                        shuffle_shards=True, seed=cfg.train.seed, max_member_bytes=d.max_member_mb * 2**20,
                        reference_bank_clips=d.reference_bank_clips, features=None if urls else d.features)


class _Loss(torch.nn.Module):
    """The trainable part as one module, so DDP sees a forward that returns the loss."""

    def __init__(self, model: torch.nn.Module, cfg: PahaConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, batch, use_motion: bool):
        if isinstance(self.model, VideoModel):
            return self.model.loss(batch, use_motion)
        return self.model.loss(batch, self.cfg.train.pce_min_shift, self.cfg.train.pce_noise_buckets)


def train_paha(config: dict[str, Any]) -> dict[str, float]:
    """Train (or continue training) UniVDM or PCE with ``config`` (a ``PahaConfig`` as a dict)."""
    cfg = PahaConfig.model_validate(config)
    t = cfg.train
    session = current_session(cfg.run)
    device = session.device
    seed_everything(t.seed)
    if cfg.data.features:  # a store made with another VAE, audio model or size would train on wrong inputs
        from trainers.features import FeatureStore

        from .features import feature_meta

        FeatureStore(cfg.data.features).check_meta(feature_meta(cfg.model, cfg.data.image_size))
    model = build_model(cfg).to(device)
    step_fn = wrap_ddp(_Loss(model, cfg), session)
    params = trainable_params(model)
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    ema = EMA(model, t.ema_decay, skip_prefixes=_FROZEN_PREFIXES)  # frozen weights need no average
    seed_everything(t.seed * 1000 + session.rank)
    step, position, restored = restore_checkpoint(session, {"model": (model, load_state), "opt": opt, "ema": ema})
    if restored and "config" in restored:
        trained = PahaConfig.model_validate(with_settings_of_before(restored["config"])).model
        changed = [k for k in BEFORE_SETTINGS if getattr(trained, k) != getattr(cfg.model, k)]
        if changed:  # the same weights, another network: the run would continue as something it was not
            raise ValueError(f"run {cfg.run.name!r} was trained with " + ", ".join(f"model.{k}={getattr(trained, k)}" for k in changed)
                             + ": continue it with those settings (--set) or start a new run.name")
    reporter = Reporter(session, t.log_every, t.checkpoint_every, t.steps, step if restored else None,
                        info={"init_2d": getattr(model, "init_2d_record", None)})
    validator = Validator(session, loader_config(cfg, cfg.data.val_urls) if cfg.data.val_urls else None, t,
                          cfg.model.noise_steps, t.seed, cfg.run.storage_path, cfg.run.name)
    # page-locked batches on a GPU; compact batches are expanded on the device (frames to float, part masks)
    stream = batch_stream(dataclasses.replace(loader_config(cfg), pin_memory=device.type == "cuda"), position, session.rank,
                          device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")
    last: dict[str, float] = {}
    model.train()
    while step < t.steps:
        lr = lr_at(step, t.steps, t.lr, t)
        set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), device=device)
        for micro, context in accumulation(step_fn, t.grad_accum):
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in next(stream).items()}
            # the same draw on every worker keeps DDP's graphs alike (motion frames change the sequence)
            draw = t.seed * 7919 + step if t.grad_accum == 1 else (t.seed * 7919 + step) * 64 + micro
            use_motion = bool(torch.rand((), generator=torch.Generator().manual_seed(draw)) < cfg.model.p_motion)
            with context:
                with autocast:
                    loss, micro_terms = step_fn(batch, use_motion and cfg.model.motion_frames > 0)
                (loss / t.grad_accum).backward()
            loss_sum += loss.detach() / t.grad_accum
            for k, v in micro_terms.items():
                terms[k] = terms.get(k, 0) + torch.as_tensor(v).detach() / t.grad_accum
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        ema.update(model)
        step += 1
        terms["loss"] = loss_sum
        terms["lr"] = torch.tensor(lr)
        validate = validator.due(step, t.steps)
        if validate:
            terms.update(validate_model(model, validator, cfg))

        def payload() -> dict[str, Any]:
            return {"model": trainable_state(model, _FROZEN_PREFIXES), "opt": opt.state_dict(), "ema": ema.shadow,
                    "config": cfg.model_dump(mode="json")}

        logged = reporter.after_step(step, terms, {}, position, payload, force=validate)
        last = logged or last
        if validate:
            validator.best.offer(step, logged["val/loss"], payload)
    reporter.close()
    session.close()
    return last


def validate_model(model: torch.nn.Module, validator: Validator, cfg: PahaConfig) -> dict[str, torch.Tensor]:
    """Held-out metrics on the fixed timestep grid: UniVDM's PAR-weighted loss (no motion frames, audio
    always given), or PCE's loss and per-region accuracy (negatives drawn with fixed seeds)."""
    model.eval()
    t = cfg.train
    if isinstance(model, VideoModel):
        out = validator.run(lambda batch, tt: _univdm_terms(model, batch, tt), ("loss", "mse"))
    else:
        keys = ("loss",) + tuple(f"{r}_acc" for r in model.pce.regions)
        out = validator.run(lambda batch, tt: _pce_terms(model, batch, tt, t.pce_min_shift, t.pce_noise_buckets), keys)
    model.train()
    return out


def _univdm_terms(model: VideoModel, batch: dict[str, Any], tt: torch.Tensor) -> dict[str, torch.Tensor]:
    loss, terms = model.loss(batch, False, tt, 0.0)
    return {"loss": loss, "mse": terms["univdm/mse"]}


def _pce_terms(model: ClassifierModel, batch: dict[str, Any], tt: torch.Tensor, min_shift: int, buckets: int) -> dict[str, torch.Tensor]:
    loss, terms = model.loss(batch, min_shift, buckets, tt)
    return {"loss": loss, **{f"{r}_acc": terms[f"pce/{r}_acc"] for r in model.pce.regions}}


def run_training(cfg: PahaConfig) -> Any:
    return launch(train_paha, cfg.model_dump(mode="json"), cfg.run)
