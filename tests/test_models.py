"""Generator and discriminator: shapes, ranges, Opacus compatibility, registry errors."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from fedsynth.common.config import ModelConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.models.registry import (
    architecture_hash,
    build_discriminator,
    build_generator,
)

TINY = ModelConfig(
    generator_channels=[4, 8, 16], discriminator_channels=4, discriminator_layers=2, norm_groups=2
)


def test_generator_maps_condition_to_four_contrasts_in_range():
    g = build_generator(TINY)
    cond = torch.nn.functional.one_hot(torch.randint(0, 7, (2, 16, 16)), 7).permute(0, 3, 1, 2)
    out = g(cond.float())
    assert out.shape == (2, 4, 16, 16)
    assert out.min() >= -1 and out.max() <= 1


def test_discriminator_scores_patches_of_condition_image_pairs():
    d = build_discriminator(TINY)
    logits = d(torch.zeros(3, 7, 32, 32), torch.zeros(3, 4, 32, 32))
    assert logits.dim() == 4 and logits.shape[:2] == (3, 1) and logits.shape[2] > 1


@pytest.mark.parametrize("build", [build_generator, build_discriminator])
def test_networks_pass_opacus_strict_validation(build):
    ModuleValidator.validate(build(ModelConfig()), strict=True)  # raises if unsupported layers


def test_batchnorm_would_be_rejected_by_the_same_check():
    with pytest.raises(Exception, match="BatchNorm"):
        ModuleValidator.validate(torch.nn.Sequential(torch.nn.BatchNorm2d(4)), strict=True)


@pytest.mark.parametrize(
    ("field", "build", "valid"),
    [
        ("generator", build_generator, "unet2d"),
        ("discriminator", build_discriminator, "patchgan2d"),
    ],
)
def test_unknown_network_name_lists_valid_ones(field, build, valid):
    cfg = ModelConfig(**{**TINY.__dict__, field: "resnet9"})
    with pytest.raises(ConfigError, match="resnet9") as e:
        build(cfg)
    assert e.value.key == f"model.{field}" and valid in str(e.value)


def test_group_count_must_divide_channels():
    with pytest.raises(ConfigError, match="model.norm_groups"):
        build_generator(ModelConfig(generator_channels=[6, 12], norm_groups=4))


def test_architecture_hash_changes_with_model_settings():
    other = ModelConfig(**{**TINY.__dict__, "discriminator_layers": 3})
    assert architecture_hash(TINY) == architecture_hash(ModelConfig(**TINY.__dict__))
    assert architecture_hash(TINY) != architecture_hash(other)
