"""Exponential moving average (EMA) of a network's weights, for the released generator.

pix2pix iterates jitter from step to step (adversarial training, and under DP the Gaussian
noise of every step); the average of recent iterates is a smoother, better generator
(Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training"). Under DP it
is free: every iterate is already covered by the accountant (DP-SGD's guarantee holds for
releasing all of them), and an average of released iterates is post-processing.
"""

from __future__ import annotations

import torch
from torch import nn


def warmed_decay(decay: float, updates: int) -> float:
    """The decay of the next update after ``updates`` updates: min(decay, (1 + n) / (10 + n)),
    so that a young average is not dominated by its first weights."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightEMA:
    """shadow <- decay * shadow + (1 - decay) * weights, after every ``update``.

    Early on the decay is warmed up as min(decay, (1 + n) / (10 + n)) (n = updates so far), so
    a fresh average is not dominated by the initial weights. Buffers (none in GroupNorm
    networks) are copied, not averaged. ``decay`` 0 keeps a plain copy of the last weights.
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = warmed_decay(self.decay, self.updates)
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)
        self.updates += 1

    def reset(self, module: nn.Module) -> None:
        """Restart the average at ``module``'s weights (e.g. new weights from the server)."""
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the module's state_dict (copies)."""
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in tensors.items():
            self.shadow[k].copy_(v)
        self.updates = int(updates)
