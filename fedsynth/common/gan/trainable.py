"""Which generator parameters a (DP) fine-tuning trains: ``privacy.trainable``.

DP-SGD adds Gaussian noise of the same size to every trained coordinate, while the signal
(the clipped per-patient gradient, norm <= C) is shared among them: the fewer coordinates
trained, the larger each one's signal-to-noise ratio. Starting from a generator pre-trained
on public data (``model.init``), a consortium therefore spends its budget on few parameters
(as DP-LoRA, DP diffusion fine-tuning and De et al. 2022 do):

- ``all``: every parameter (training from scratch needs this);
- ``norm+bias``: GroupNorm scales and shifts and every bias -- a per-channel re-calibration
  of intensities (contrast, brightness per feature), ~1-2 % of the parameters;
- ``decoder``: the decoder and the output convolution of ``resunet2d`` (how features are
  rendered into the four contrasts), the encoder kept as pre-trained;
- ``head``: norm+bias plus the 1x1 output convolution.

Frozen parameters get ``requires_grad=False`` before the DP engine wraps the network, so
they get no per-sample gradient, no noise, no update; they stay equal to the public init
(independent of private data).
"""

from __future__ import annotations

from torch import nn

from fedsynth.common.config import TRAINABLE_CHOICES
from fedsynth.common.errors import ConfigError

TRAINABLE = TRAINABLE_CHOICES


def _is_norm_or_bias(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.GroupNorm) or name == "bias"


def _selected(model: nn.Module, choice: str) -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    if choice == "all":
        return names
    norm_bias = {
        f"{prefix}.{n}" if prefix else n
        for prefix, m in model.named_modules()
        for n, _ in m.named_parameters(recurse=False)
        if _is_norm_or_bias(m, n)
    }
    if choice == "norm+bias":
        return norm_bias
    if choice == "head":
        return norm_bias | {n for n in names if n.startswith("head.")}
    if choice == "decoder":
        parts = {n.split(".")[0] for n in names}
        if not {"decoder", "head"} <= parts:
            raise ConfigError(
                "privacy.trainable",
                f"'decoder' needs a generator with decoder/head modules (model.generator "
                f"resunet2d); {type(model).__name__} has {sorted(parts)}",
            )
        return {n for n in names if n.split(".")[0] in ("decoder", "head")}
    raise ConfigError(
        "privacy.trainable", f"unknown choice {choice!r}; valid: {', '.join(TRAINABLE)}"
    )


def select_trainable(model: nn.Module, choice: str) -> list[str]:
    """Freeze every parameter of ``model`` outside ``choice`` (requires_grad=False); return
    the sorted names of the trainable ones. ConfigError for an unknown or unfit choice."""
    keep = _selected(model, choice)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return sorted(keep)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of scalar parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
