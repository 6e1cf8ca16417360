"""What both training loops share around the optimiser step (trainers/optim.py): the learning-rate
schedule, statistics summed over workers, InfoNCE over every worker's negatives, and gradient
checkpointing — each against a known answer or against the single-process computation."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainers.facial.binding import gather_rows, info_nce, info_nce_global
from trainers.optim import OptimSettings, RunningMoments, lr_at


def test_warmup_then_cosine_known_values():
    s = OptimSettings(warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, 110, 1.0, s) == pytest.approx(0.1)  # (step + 1) / warmup
    assert lr_at(9, 110, 1.0, s) == pytest.approx(1.0)
    assert lr_at(10, 110, 1.0, s) == pytest.approx(1.0)  # cosine starts at lr ...
    assert lr_at(109, 110, 1.0, s) == pytest.approx(0.1)  # ... and ends at min_lr_ratio × lr on the last step
    mid = 10 + 99 / 2
    assert lr_at(int(mid), 110, 1.0, s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * int(mid - 10) / 99)))
    assert lr_at(500, 110, 2.0, s) == pytest.approx(0.2)  # past the end: stays at the floor
    constant = OptimSettings()
    assert [lr_at(i, 100, 3e-4, constant) for i in (0, 50, 99)] == [3e-4] * 3


def test_running_moments_equal_the_statistics_of_all_batches():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 5, generator=g) * 3 + 2 for n in (7, 1, 30)]
    m = RunningMoments(5)
    for b in batches:
        m.add(b)
    mean, std = m.mean_std()
    whole = torch.cat(batches)
    assert torch.allclose(mean, whole.mean(0), atol=1e-5) and torch.allclose(std, whole.std(0), atol=1e-5)
    with pytest.raises(ValueError, match="at least two samples"):
        RunningMoments(5).mean_std()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_workers(rank: int, port: int, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, sizes: list[int],
                 out: dict) -> None:
    """One of two gloo workers: its rows of the global batch through ``gather_rows`` and
    ``info_nce_global``; the loss and the gradient of its rows go back through ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        lo = sum(sizes[:rank])
        mine_a = a[lo: lo + sizes[rank]].clone().requires_grad_(True)
        mine_b = b[lo: lo + sizes[rank]].clone().requires_grad_(True)
        a_all, offset = gather_rows(mine_a)
        b_all, _ = gather_rows(mine_b)
        lab = labels[lo: lo + sizes[rank]]
        same = lab[:, None] == gather_rows(lab)[0][None, :]
        loss = info_nce_global(mine_a, mine_b, a_all, b_all, offset, 0.1, same)
        # what DDP does with these gradients: average over workers (the loss of the mean over workers)
        (loss / 2).backward()
        moments = RunningMoments(3)
        moments.add(a[lo: lo + sizes[rank], :3])
        moments.all_reduce()
        out[rank] = {"loss": loss.item(), "offset": offset, "grad_a": mine_a.grad, "grad_b": mine_b.grad,
                     "mean_std": moments.mean_std()}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [[4, 4], [5, 3]], ids=["equal", "uneven"])
def test_gathered_negatives_equal_the_global_batch_and_its_gradient(sizes):
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    a, b = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    labels = torch.tensor([0, 1, 2, 1, 0, 3, 2, 1])[:n]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_two_workers, args=(_free_port(), a, b, labels, sizes, out), nprocs=2, join=True)
        got = dict(out)
    # the reference: one process, the whole batch, the same masks
    ra, rb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    # each worker averages over its own rows: the workers' mean is the global mean when sizes are equal
    per_row = [info_nce_global(ra[i:i + 1], rb[i:i + 1], ra, rb, i, 0.1, (labels[i] == labels)[None]) for i in range(n)]
    whole = info_nce(ra, rb, 0.1, labels[:, None] == labels[None, :])
    if sizes[0] == sizes[1]:
        assert (got[0]["loss"] + got[1]["loss"]) / 2 == pytest.approx(whole.item(), rel=1e-5)
    reference = (sum(per_row[:sizes[0]]) / sizes[0] + sum(per_row[sizes[0]:]) / sizes[1]) / 2
    reference.backward()
    assert [got[0]["offset"], got[1]["offset"]] == [0, sizes[0]]
    grad_a = torch.cat([got[0]["grad_a"], got[1]["grad_a"]])
    grad_b = torch.cat([got[0]["grad_b"], got[1]["grad_b"]])
    # every row's gradient holds what the other worker's loss sent back to it
    assert torch.allclose(grad_a, ra.grad, atol=1e-6) and torch.allclose(grad_b, rb.grad, atol=1e-6)
    mean, std = got[0]["mean_std"]
    assert torch.allclose(mean, a[:, :3].mean(0), atol=1e-5) and torch.allclose(std, a[:, :3].std(0), atol=1e-5)
    assert torch.equal(got[1]["mean_std"][0], mean)


def test_a_single_worker_gathers_nothing():
    x = torch.randn(3, 4)
    assert gather_rows(x) == (x, 0)


def test_gradient_checkpointing_keeps_values_and_gradients():
    from trainers.facial.diffusion import Denoiser
    from trainers.paha.unet import UniVDM

    def run(net, inputs, flag):
        torch.manual_seed(0)
        net.grad_checkpointing = flag
        net.zero_grad(set_to_none=True)
        out = net(*inputs)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]

    torch.manual_seed(3)
    denoiser = Denoiser(latent=8, dim=32, layers=2, heads=4, audio_dim=16, emotion_dim=8, latent_fps=12.5, audio_fps=25.0)
    inputs = (torch.randn(2, 6, 8), torch.tensor([3, 40]), torch.randn(2, 12, 16), torch.randn(2, 8))
    unet = UniVDM(4, (16, 32), (0, 1), heads=4, audio_dim=16, audio_context=1)
    torch.nn.init.normal_(unet.out[-1].weight, std=0.02)  # the zero-initialised output layer would hide the rest
    frames = (torch.randn(1, 3, 4, 8, 8), torch.tensor([[0, 500, 500]]), torch.tensor([[0, 2, 2]]), torch.randn(1, 3, 16))
    for net, args in ((denoiser, inputs), (unet, frames)):
        plain, plain_grads = run(net, args, False)
        saved, saved_grads = run(net, args, True)
        assert torch.allclose(plain, saved, atol=1e-6)
        assert len(plain_grads) == len(saved_grads) > 10
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(plain_grads, saved_grads))
