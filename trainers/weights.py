"""Which of a model's weights a trainer optimises, saves and averages.

Weights loaded from a path (pretrained speech, text or VAE backbones) stay frozen and are left out
of checkpoints: a restored run reloads them from the same path, so checkpoints stay small.
"""

from __future__ import annotations

import torch


def trainable_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimiser updates (frozen ones have ``requires_grad`` off)."""
    return [p for p in module.parameters() if p.requires_grad]


def trainable_state(model: torch.nn.Module, frozen_prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict without the weights that were loaded from a path and stay frozen."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(frozen_prefixes)}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], frozen_prefixes: tuple[str, ...]) -> None:
    """Load a ``trainable_state``; anything else missing or unexpected is a config mismatch."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(frozen_prefixes)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}")


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float, skip_prefixes: tuple[str, ...] = ()):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()
                       if v.dtype.is_floating_point and not k.startswith(skip_prefixes)}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Move the average towards the module's current weights by ``1 - decay``."""
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1 - self.decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        """Put the averaged weights into ``module`` (the others stay as they are)."""
        module.load_state_dict({**module.state_dict(), **self.shadow})
