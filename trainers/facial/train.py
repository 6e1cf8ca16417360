"""The training loop of trainer 1 — one function run by every Ray Train worker (or in-process).

    cnas train facial --config tiny --set data.urls='shards/cnas-{000000..000009}.tar'

Phase 1 (``train.binding_steps``) trains emotion binding and the motion autoencoder, phase 2
(``train.diffusion_steps``) the latent denoiser. Every ``train.checkpoint_every`` steps (and at
the end) a checkpoint is written; a restarted run — after a crash, a worker failure or just the
same command again — continues from the newest one at the same step with the same weights,
optimiser state, EMA, data position and random-number state.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import torch
import torch.distributed as dist

from trainers.data import LoaderConfig, make_loader
from trainers.runtime import EMA, MetricLog, Session, current_session, launch, rng_state, seed_everything, set_rng_state

from .config import FacialConfig
from .model import FacialModel

log = logging.getLogger(__name__)


def loader_config(cfg: FacialConfig) -> LoaderConfig:
    d = cfg.data
    if not d.urls:
        raise ValueError("data.urls is not set: give the training shards (paths, brace pattern or <split>.index.json)")
    return LoaderConfig(urls=d.urls, view="facial", window_frames=d.window_frames, batch_size=d.batch_size,
                        num_workers=d.loader_workers, shuffle_buffer=d.shuffle_buffer, shuffle_shards=True,
                        seed=cfg.train.seed, default_emotion=d.default_emotion, min_valid_frames=d.min_valid_frames)


def batches(lcfg: LoaderConfig, position: dict[str, int], rank: int) -> Iterator[dict[str, Any]]:
    """Endless batches, epoch after epoch; ``position`` (epoch, batches) is kept current for checkpoints."""
    while True:
        got = 0
        for batch in make_loader(lcfg, epoch=position["epoch"], skip=position["batches"]):
            got += 1
            position["batches"] += 1
            yield batch
        if got == 0 and position["batches"] == 0:
            raise RuntimeError(f"training worker {rank} got no usable {lcfg.window_frames}-frame windows from the shards "
                               f"{lcfg.urls!r}: every worker needs at least one shard with FLAME fits and clips that long")
        position["epoch"] += 1
        position["batches"] = 0


# weights loaded from a path are not saved in checkpoints (they are reloaded from the same path)
_FROZEN_PREFIXES = ("frontend.model.", "binding.text.model.")


def _trainable_state(model: FacialModel) -> dict[str, torch.Tensor]:
    frozen = model.cfg.freeze_backbones
    return {k: v for k, v in model.state_dict().items() if not (frozen and k.startswith(_FROZEN_PREFIXES))}


def load_model_state(model: FacialModel, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.cfg.freeze_backbones and k.startswith(_FROZEN_PREFIXES))]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _broadcast_buffers(model: FacialModel, session: Session) -> None:
    if session.world_size > 1:
        for name in ("motion_mean", "motion_std", "latent_scale", "stats_ready"):
            dist.broadcast(getattr(model, name), src=0)


def _mean_metrics(terms: dict[str, torch.Tensor], session: Session) -> dict[str, float]:
    keys = sorted(terms)
    vec = torch.stack([terms[k].detach().float().reshape(()) for k in keys]).to(session.device)
    if session.world_size > 1:
        dist.all_reduce(vec)
        vec /= session.world_size
    return dict(zip(keys, vec.tolist()))


def _wrap(module: torch.nn.Module, session: Session) -> torch.nn.Module:
    if session.world_size == 1:
        return module
    ids = [session.device.index] if session.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def _params(module: torch.nn.Module):
    return [p for p in module.parameters() if p.requires_grad]


def train_facial(config: dict[str, Any]) -> dict[str, float]:
    """Train (or continue training) trainer 1 with ``config`` (a ``FacialConfig`` as a dict)."""
    cfg = FacialConfig.model_validate(config)
    t = cfg.train
    session = current_session(cfg.run)
    device = session.device
    seed_everything(t.seed)  # same initial weights on every worker (DDP also broadcasts rank 0's)
    model = FacialModel(cfg.model).to(device)
    binding, diffusion = _wrap(model.binding, session), _wrap(model.diffusion, session)
    opt1 = torch.optim.AdamW(_params(model.binding), lr=t.lr, weight_decay=t.weight_decay)
    opt2 = torch.optim.AdamW(_params(model.diffusion), lr=t.lr, weight_decay=t.weight_decay)
    ema = EMA(model.diffusion, t.ema_decay)
    step, position = 0, {"epoch": 0, "batches": 0}
    seed_everything(t.seed * 1000 + session.rank)  # noise and condition dropout differ per worker

    ckpt = session.latest_checkpoint()
    if ckpt is not None:
        state = torch.load(ckpt / "model.pt", map_location=device, weights_only=False)
        load_model_state(model, state["model"])
        opt1.load_state_dict(state["opt1"])
        opt2.load_state_dict(state["opt2"])
        ema.shadow = {k: v.to(device) for k, v in state["ema"].items()}
        step = state["step"]
        mine = ckpt / f"rank_{session.rank}.pt"
        if mine.exists() and state.get("world_size") == session.world_size:
            rank_state = torch.load(mine, weights_only=False)
            position = rank_state["position"]
            set_rng_state(rank_state["rng"])
        else:  # another number of workers: the data split changed, start the next epoch afresh
            position = {"epoch": state.get("epoch", 0) + 1, "batches": 0}
        if session.rank == 0:
            log.warning("resumed from %s at step %d", ckpt.name, step)

    metrics_log = MetricLog(session)
    stream = batches(loader_config(cfg), position, session.rank)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")
    last: dict[str, float] = {}
    tic = time.perf_counter()
    while step < t.total_steps:
        batch = next(stream)
        motion = batch["motion"].to(device)
        valid = batch["valid"].to(device)
        wave = batch["audio"].to(device)
        label = torch.as_tensor(batch["emotion_label"], device=device)
        intensity = torch.as_tensor(batch["emotion_intensity"], device=device)
        text = list(batch["emotion_text"])
        phase = 1 if step < t.binding_steps else 2
        if not bool(model.stats_ready):
            model.measure_motion_stats(motion, valid)
            _broadcast_buffers(model, session)
        with autocast:
            feats = model.audio_features(wave, motion.shape[1])
        if phase == 1:
            model.train()
            with autocast:
                loss, terms = binding(model.normalise(motion), valid, feats, text, label, intensity,
                                      t.temperature, t.velocity_weight)
            opt, params = opt1, _params(model.binding)
        else:
            if step == t.binding_steps:  # entering phase 2: fix the latent scale once
                model.measure_latent_scale(motion)
                _broadcast_buffers(model, session)
            model.binding.eval()
            model.diffusion.train()
            with torch.no_grad(), autocast:
                z0 = model.encode_motion(motion)
                emotion = model.mixed_emotion(feats, text, label, intensity)
            with autocast:
                loss, terms = diffusion(z0.float(), feats, emotion.float(), model.schedule,
                                        cfg.model.p_drop_audio, cfg.model.p_drop_emotion)
            opt, params = opt2, _params(model.diffusion)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        if phase == 2:
            ema.update(model.diffusion)
        step += 1

        if step % t.log_every == 0 or step % t.checkpoint_every == 0 or step == t.total_steps:
            terms["loss"] = loss.detach()
            last = _mean_metrics(terms, session)
            last.update(step=step, phase=phase, epoch=position["epoch"],
                        steps_per_s=t.log_every / max(time.perf_counter() - tic, 1e-9))
            tic = time.perf_counter()
            metrics_log.write(step, last)
            if session.rank == 0:
                log.info("step %d phase %d loss %.4f", step, phase, last["loss"])
            if step % t.checkpoint_every == 0 or step == t.total_steps:
                files: dict[str, Any] = {f"rank_{session.rank}.pt": {"position": dict(position), "rng": rng_state()}}
                if session.rank == 0:
                    files["model.pt"] = {"step": step, "model": _trainable_state(model), "opt1": opt1.state_dict(),
                                         "opt2": opt2.state_dict(), "ema": ema.shadow, "world_size": session.world_size,
                                         "epoch": position["epoch"], "config": cfg.model_dump(mode="json")}
                session.save(step, files, last)
            else:
                session.report(last)
    metrics_log.close()
    session.close()
    return last


def run_training(cfg: FacialConfig) -> Any:
    """Launch ``train_facial`` as configured (Ray Train workers, or in this process)."""
    return launch(train_facial, cfg.model_dump(mode="json"), cfg.run)
