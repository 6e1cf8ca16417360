"""The training loop of trainer 2 — UniVDM or the PCE classifiers (``train.target``), run by every
Ray Train worker (or in-process), resumable exactly like trainer 1 (see ``trainers/checkpoint.py``).

    cnas train paha --config tiny --set data.urls=... --set train.target=univdm
    cnas train paha --config tiny --set data.urls=... --set train.target=pce --set run.name=paha-tiny-pce
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainers.checkpoint import restore_checkpoint, seed_everything
from trainers.data import LoaderConfig, batch_stream
from trainers.reporting import Reporter
from trainers.session import current_session, launch, wrap_ddp
from trainers.weights import EMA, load_trainable, trainable_params, trainable_state

from .config import PahaConfig
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
        loaded, skipped = model.unet.init_from_2d(torch.load(cfg.model.init_2d, map_location="cpu", weights_only=True))
        log.warning("init_2d: %d tensors loaded from %s, %d skipped (no matching layer/shape)", len(loaded),
                    cfg.model.init_2d, len(skipped))
    return model


def loader_config(cfg: PahaConfig) -> LoaderConfig:
    d = cfg.data
    if not d.urls:
        raise ValueError("data.urls is not set: give the training shards (paths, brace pattern or <split>.index.json)")
    return LoaderConfig(urls=d.urls, view="paha", window_frames=d.window_frames, image_size=d.image_size,
                        batch_size=d.batch_size, num_workers=d.loader_workers, shuffle_buffer=d.shuffle_buffer,
                        shuffle_shards=True, seed=cfg.train.seed)


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
    model = build_model(cfg).to(device)
    step_fn = wrap_ddp(_Loss(model, cfg), session)
    params = trainable_params(model)
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    ema = EMA(model, t.ema_decay, skip_prefixes=_FROZEN_PREFIXES)  # frozen weights need no average
    seed_everything(t.seed * 1000 + session.rank)
    step, position, restored = restore_checkpoint(session, {"model": (model, load_state), "opt": opt, "ema": ema})
    reporter = Reporter(session, t.log_every, t.checkpoint_every, t.steps, step if restored else None)
    stream = batch_stream(loader_config(cfg), position, session.rank)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")
    last: dict[str, float] = {}
    model.train()
    while step < t.steps:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in next(stream).items()}
        # the same draw on every worker keeps DDP's graphs alike (motion frames change the sequence)
        use_motion = bool(torch.rand((), generator=torch.Generator().manual_seed(t.seed * 7919 + step)) < cfg.model.p_motion)
        with autocast:
            loss, terms = step_fn(batch, use_motion and cfg.model.motion_frames > 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        ema.update(model)
        step += 1
        terms["loss"] = loss.detach()
        last = reporter.after_step(step, terms, {}, position, lambda: {
            "model": trainable_state(model, _FROZEN_PREFIXES), "opt": opt.state_dict(),
            "ema": ema.shadow,
            "config": cfg.model_dump(mode="json")}) or last
    reporter.close()
    session.close()
    return last


def run_training(cfg: PahaConfig) -> Any:
    return launch(train_paha, cfg.model_dump(mode="json"), cfg.run)
