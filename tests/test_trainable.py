"""privacy.trainable: which generator parameters a DP fine-tuning trains, noises and changes."""

from __future__ import annotations

import pytest
import torch
from helpers.gan_fakes import fake_cache, tiny_config

from fedsynth.common.config import ModelConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.gan.trainable import count_parameters, select_trainable
from fedsynth.common.gan.trainer import LocalTrainer
from fedsynth.common.models.registry import build_generator

RES = ("model.generator=resunet2d", "model.generator_channels=[4,8]")


def test_norm_and_bias_selects_groupnorm_and_biases_only():
    g = build_generator(
        ModelConfig(generator="resunet2d", generator_channels=[8, 16, 32], norm_groups=4)
    )
    names = select_trainable(g, "norm+bias")
    assert names and all(n.endswith("bias") or ".adn.N." in n for n in names)
    trainable, total = count_parameters(g)
    assert 0 < trainable < 0.1 * total
    assert not any(p.requires_grad for n, p in g.named_parameters() if n.endswith("conv.weight"))


def test_decoder_choice_needs_the_resize_generator():
    with pytest.raises(ConfigError, match="decoder/head"):
        select_trainable(build_generator(ModelConfig(generator="unet2d")), "decoder")


@pytest.mark.parametrize("dp", ["true", "false"])
@pytest.mark.parametrize("choice", ["norm+bias", "decoder"])
def test_training_changes_only_the_trainable_generator_parameters(choice, dp):
    cfg = tiny_config(*RES, f"privacy.trainable={choice}", f"privacy.enabled={dp}")
    trainer = LocalTrainer(cfg, fake_cache(), planned_steps=3)
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    trainer.train_steps(3)
    after = trainer.generator.state_dict()
    trainable = set(trainer.trainable)
    assert trainable and trainable != set(before)
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (k in trainable), k


def test_two_views_are_averaged_inside_one_clipped_gradient_per_patient():
    from fedsynth.common.gan.losses import Pix2PixLoss
    from fedsynth.common.gan.step import GanParts, generator_step
    from fedsynth.common.gan.trainer import with_views
    from fedsynth.common.models.registry import build_discriminator
    from fedsynth.common.privacy.dp import PatientDP

    cfg = tiny_config(*RES)
    torch.manual_seed(0)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    cache = fake_cache()
    cond = torch.from_numpy(__import__("numpy").eye(7, dtype="float32")[cache.tissue[:3]]).permute(
        0, 3, 1, 2
    )
    real = torch.from_numpy(cache.images[:3])
    vc, vr = with_views(cond, real, 2)
    assert torch.equal(vc[3:], cond.flip(-2))
    # Reference: each patient's gradient = mean of its two views' gradients, computed alone.
    loss = Pix2PixLoss()
    refs = []
    for i in range(3):
        rows = torch.tensor([i, i + 3])
        fake = g(vc[rows])
        adv, l1 = loss.generator(d(vc[rows], fake), fake, vr[rows])
        refs.append(torch.autograd.grad((adv + l1).mean(), list(g.parameters())))
    dp = PatientDP(g, noise_multiplier=0.0, max_grad_norm=1e9, expected_batch_size=3,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    parts = GanParts(g, d, torch.optim.SGD(g.parameters(), lr=0.0),
                     torch.optim.SGD(d.parameters(), lr=0.0), loss, dp_g=dp)  # fmt: skip
    for p in d.parameters():
        p.requires_grad_(False)
    generator_step(parts, vc, vr, parts.g(vc), views=2)
    for k, p in enumerate(g.parameters()):
        want = sum(r[k] for r in refs) / 3  # no clipping, no noise: mean of patient gradients
        torch.testing.assert_close(p.grad, want, rtol=1e-3, atol=1e-5)
