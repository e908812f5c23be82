"""Build networks from ``cfg.model`` by name; an unknown name is a ConfigError listing the valid ones."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict

from torch import nn

from fedsynth.common.config import ModelConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.models.discriminator import ConditionalPatchGAN
from fedsynth.common.models.generator import ResizeConvUNet, UNetGenerator


def _unet2d(cfg: ModelConfig) -> nn.Module:
    return UNetGenerator(
        spatial_dims=2,
        channels=tuple(cfg.generator_channels),
        norm_groups=cfg.norm_groups,
    )


def _resunet2d(cfg: ModelConfig) -> nn.Module:
    return ResizeConvUNet(
        spatial_dims=2,
        channels=tuple(cfg.generator_channels),
        norm_groups=cfg.norm_groups,
    )


def _patchgan2d(cfg: ModelConfig) -> nn.Module:
    return ConditionalPatchGAN(
        spatial_dims=2,
        channels=cfg.discriminator_channels,
        num_layers=cfg.discriminator_layers,
        norm_groups=cfg.norm_groups,
    )


# name (model.generator / model.discriminator) -> builder. Only 2-D networks: the whole
# pipeline (slices, trainer, synthesis) is 2-D; a 3-D variant joins with a tested 3-D path.
Builder = Callable[[ModelConfig], nn.Module]
GENERATORS: dict[str, Builder] = {
    "unet2d": _unet2d,
    "resunet2d": _resunet2d,  # resize-convolution upsampling: no checkerboards
}
DISCRIMINATORS: dict[str, Builder] = {"patchgan2d": _patchgan2d}


def _build(table: dict[str, Builder], name: str, key: str, cfg: ModelConfig) -> nn.Module:
    if name not in table:
        raise ConfigError(key, f"unknown network {name!r}; valid: {', '.join(sorted(table))}")
    _check_groups(cfg)
    return table[name](cfg)


def _check_groups(cfg: ModelConfig) -> None:
    # GroupNorm needs every normalised channel count divisible by the group count.
    counts = list(cfg.generator_channels) + [
        cfg.discriminator_channels * 2**i for i in range(1, cfg.discriminator_layers + 1)
    ]
    bad = [c for c in counts if c % cfg.norm_groups]
    if bad:
        raise ConfigError(
            "model.norm_groups",
            f"{cfg.norm_groups} does not divide the channel counts {bad} "
            "(model.generator_channels / model.discriminator_channels)",
        )


def build_generator(cfg: ModelConfig) -> nn.Module:
    """The generator named by ``cfg.generator`` (see GENERATORS), freshly initialised."""
    return _build(GENERATORS, cfg.generator, "model.generator", cfg)


def build_discriminator(cfg: ModelConfig) -> nn.Module:
    """The discriminator named by ``cfg.discriminator`` (see DISCRIMINATORS)."""
    return _build(DISCRIMINATORS, cfg.discriminator, "model.discriminator", cfg)


def architecture_hash(cfg: ModelConfig) -> str:
    """Short fingerprint of the model section: checkpoints store it and loading checks it."""
    arch = asdict(cfg)
    arch.pop("init", None)  # where the weights start from is not part of the architecture
    blob = json.dumps(arch, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
