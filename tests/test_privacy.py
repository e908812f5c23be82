"""Patient-level DP: per-patient gradients, clipping and noise, joint accounting, budget."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from helpers.gan_fakes import fake_cache, tiny_config
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedsynth.common.data.datasets import PatientSampler
from fedsynth.common.errors import ConfigError, PrivacyBudgetError
from fedsynth.common.gan.losses import Pix2PixLoss
from fedsynth.common.gan.step import GanParts, train_step
from fedsynth.common.gan.trainer import LocalTrainer
from fedsynth.common.models.registry import build_discriminator, build_generator
from fedsynth.common.privacy.accountant import PrivacyAccountant
from fedsynth.common.privacy.dp import (
    PatientDP,
    accounted_noise_multiplier,
    calibrate_noise_multiplier,
    check_delta,
)
from fedsynth.common.privacy.report import NO_DP, SitePrivacy, privacy_report

CFG = tiny_config()


def _batch(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    cache = fake_cache(seed=seed)
    sampler = PatientSampler(cache, 1.0, 0.7, seed)
    return sampler.batch(sampler.sample(np.random.default_rng(seed))[:b])


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    return build_generator(CFG.model), build_discriminator(CFG.model)


def _per_sample(params) -> list[torch.Tensor]:
    return [p.grad_sample.detach().clone() for p in params]


def test_d_step_per_patient_gradient_is_sum_of_real_and_fake_terms():
    cond, real = _batch()
    g, d = _nets()
    fake = g(cond).detach()
    loss = Pix2PixLoss()
    reference = []  # patient i alone, real + fake term, no Opacus
    for i in range(cond.shape[0]):
        d.zero_grad()
        s = slice(i, i + 1)
        loss.discriminator(d(cond[s], real[s]), d(cond[s], fake[s])).sum().backward()
        reference.append([p.grad.clone() for p in d.parameters()])
    dp = PatientDP(d, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=3,
                   generator=torch.Generator())  # fmt: skip
    terms = loss.discriminator_terms(dp.module(torch.cat([cond, cond]), torch.cat([real, fake])), 3)
    terms.sum().backward()
    folded = [gs.reshape(2, 3, *gs.shape[1:]).sum(0) for gs in _per_sample(d.parameters())]
    for i, ref in enumerate(reference):
        for got, want in zip(folded, ref, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)


def test_g_step_per_patient_gradients_match_single_patient_backward():
    cond, real = _batch()
    g, d = _nets()
    loss = Pix2PixLoss()
    for p in d.parameters():
        p.requires_grad_(False)
    reference = []
    for i in range(3):
        g.zero_grad()
        fake = g(cond[i : i + 1])
        adv, l1 = loss.generator(d(cond[i : i + 1], fake), fake, real[i : i + 1])
        (adv + l1).sum().backward()
        reference.append([p.grad.clone() for p in g.parameters()])
    dp = PatientDP(g, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=3,
                   generator=torch.Generator())  # fmt: skip
    fake = dp.module(cond)
    adv, l1 = loss.generator(d(cond, fake), fake, real)
    (adv + l1).sum().backward()
    for i, ref in enumerate(reference):
        for got, want in zip(_per_sample(g.parameters()), ref, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-5)


def test_default_mode_per_sample_gradients_are_exact_on_the_default_generator():
    # The full-size U-Net (4 levels, 32..256 channels) at 64 px: Opacus's "hooks" mode got
    # some Conv2d per-sample gradients wrong here, which the tiny test nets do not reveal.
    from fedsynth.common.config import ModelConfig

    torch.manual_seed(0)
    g = build_generator(ModelConfig())
    classes = torch.randint(0, 7, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    cond = torch.nn.functional.one_hot(classes, 7).permute(0, 3, 1, 2).float()
    reference = []
    for i in range(2):
        g.zero_grad()
        g(cond[i : i + 1]).square().sum().backward()
        reference.append([p.grad.clone() for p in g.parameters()])
    dp = PatientDP(g, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=2,
                   generator=torch.Generator())  # fmt: skip
    dp.module(cond).square().sum().backward()
    for i, ref in enumerate(reference):
        for got, want in zip(_per_sample(g.parameters()), ref, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-3, atol=1e-5 * want.abs().max())


def test_clipping_bounds_each_patients_contribution():
    cond, real = _batch()
    g, _ = _nets()
    dp = PatientDP(g, noise_multiplier=0.0, max_grad_norm=0.01, expected_batch_size=1,
                   generator=torch.Generator())  # fmt: skip
    (dp.module(cond) - real).abs().sum().backward()
    dp.privatise(3)
    total = torch.cat([p.grad.flatten() for p in g.parameters()]).norm()
    assert total <= 3 * 0.01 + 1e-6  # sum of 3 clipped gradients, divided by 1


def _parts(dp: bool, sigma: float = 1.0, clip: float = 1.0, expected: float = 3.0, seed=0,
           opt=torch.optim.Adam):  # fmt: skip
    g, d = _nets(seed)
    noise = torch.Generator().manual_seed(seed)
    kw = dict(noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=expected,
              generator=noise)  # fmt: skip
    return GanParts(
        generator=g, discriminator=d,
        opt_g=opt(g.parameters(), lr=1e-3), opt_d=opt(d.parameters(), lr=1e-3),
        loss=Pix2PixLoss(), dp_d=PatientDP(d, **kw) if dp else None,
        dp_g=PatientDP(g, **kw) if dp else None,
    )  # fmt: skip


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_dp_noises_the_generator_update():
    cond, real = _batch()
    plain, private = _parts(dp=False), _parts(dp=True)
    start = _flat(plain.generator)
    assert torch.equal(start, _flat(private.generator))
    train_step(plain, cond, real)
    train_step(private, cond, real)
    moved = _flat(private.generator) - start
    assert moved.abs().sum() > 0
    assert not torch.allclose(_flat(plain.generator), _flat(private.generator))


def test_without_noise_or_clipping_dp_step_equals_plain_step():
    # sigma 0, a clip no gradient reaches, realised batch == expected batch: the DP update
    # must be the ordinary mean-gradient update (checks the whole per-patient pipeline).
    # SGD, not Adam: Adam's first step is lr * sign(g), which amplifies round-off near g = 0.
    cond, real = _batch()
    sgd = torch.optim.SGD
    plain = _parts(dp=False, opt=sgd)
    private = _parts(dp=True, sigma=0.0, clip=1e9, expected=3.0, opt=sgd)
    train_step(plain, cond, real)
    train_step(private, cond, real)
    torch.testing.assert_close(
        _flat(plain.generator), _flat(private.generator), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        _flat(plain.discriminator), _flat(private.discriminator), rtol=1e-4, atol=1e-6
    )


def test_empty_poisson_batch_still_gives_a_noise_only_update():
    parts = _parts(dp=True)
    g0, d0 = _flat(parts.generator), _flat(parts.discriminator)
    losses = train_step(parts, torch.zeros(0, 7, 16, 16), torch.zeros(0, 4, 16, 16))
    assert losses.batch == 0 and math.isnan(losses.d)
    assert not torch.equal(g0, _flat(parts.generator))
    assert not torch.equal(d0, _flat(parts.discriminator))


def test_joint_mechanism_is_accounted_once_with_sigma_over_root_two():
    assert accounted_noise_multiplier(2.0) == pytest.approx(2.0 / math.sqrt(2))
    sigma = calibrate_noise_multiplier(
        target_epsilon=8.0, delta=1e-5, sample_rate=0.1, planned_steps=50
    )
    acc = PrivacyAccountant(kind="rdp", delta=1e-5, target_epsilon=8.0)
    acc.step(noise_multiplier=accounted_noise_multiplier(sigma), sample_rate=0.1, steps=50)
    assert 7.5 < acc.epsilon() <= 8.0  # calibrated to spend (nearly) all of the target


def _trained(steps: int, *overrides: str) -> LocalTrainer:
    cfg = tiny_config(f"train.steps={steps}", *overrides)
    trainer = LocalTrainer(cfg, fake_cache(), planned_steps=steps)
    trainer.train_steps(steps)
    return trainer


def test_reported_epsilon_matches_independent_recomputation_and_target():
    trainer = _trained(4)
    report = trainer.privacy()
    assert report.steps == 4 == trainer.steps_done
    assert len(report.history) == 1
    h = report.history[0]
    assert h["noise_multiplier"] == pytest.approx(trainer.noise_multiplier / math.sqrt(2))
    assert h["sample_rate"] == pytest.approx(3 / 6)
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=h["sample_rate"], noise_multiplier=h["noise_multiplier"],
                      steps=h["steps"], orders=orders)  # fmt: skip
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=trainer.cfg.privacy.delta)
    assert report.epsilon == pytest.approx(eps, rel=1e-9)
    assert report.epsilon <= trainer.cfg.privacy.target_epsilon
    with pytest.raises(PrivacyBudgetError, match="target_epsilon"):
        trainer.train_steps(1)
    assert trainer.steps_done == 4  # refused before taking any step


def test_accountant_state_round_trips_through_json():
    acc = PrivacyAccountant(kind="rdp", delta=1e-4, target_epsilon=5.0)
    acc.step(noise_multiplier=1.1, sample_rate=0.2, steps=3)
    acc.step(noise_multiplier=1.1, sample_rate=0.2)
    acc.step(noise_multiplier=0.9, sample_rate=0.25)
    restored = PrivacyAccountant(kind="rdp", delta=1e-4, target_epsilon=5.0)
    restored.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.history == acc.history == [(1.1, 0.2, 4), (0.9, 0.25, 1)]
    assert restored.epsilon() == acc.epsilon() and restored.steps == 5
    other = PrivacyAccountant(kind="prv", delta=1e-4, target_epsilon=5.0)
    with pytest.raises(ConfigError, match="privacy.accountant"):
        other.load_state_dict(acc.state_dict())


def test_prv_accountant_composes_the_same_history():
    rdp = PrivacyAccountant(kind="rdp", delta=1e-5, target_epsilon=None)
    prv = PrivacyAccountant(kind="prv", delta=1e-5, target_epsilon=None)
    for acc in (rdp, prv):
        acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=20)
    assert 0 < prv.epsilon() <= rdp.epsilon() * 1.05  # PRV is the tighter bound


def test_delta_must_be_well_below_one_over_patients():
    check_delta(1e-4, 6)
    with pytest.raises(ConfigError, match="privacy.delta"):
        check_delta(0.05, 6)
    with pytest.raises(ConfigError, match="privacy.delta"):
        LocalTrainer(tiny_config("privacy.delta=0.02"), fake_cache(), planned_steps=4)


def test_batch_larger_than_site_is_a_config_error():
    with pytest.raises(ConfigError, match="train.batch_size"):
        LocalTrainer(tiny_config("train.batch_size=7"), fake_cache(), planned_steps=4)


def test_no_dp_reports_infinity_in_words():
    trainer = _trained(2, "privacy.enabled=false")
    assert math.isinf(trainer.epsilon)
    report = privacy_report(accountant="rdp", delta=1e-5, dp_enabled=False,
                            sites={"central": trainer.privacy()})  # fmt: skip
    assert report["worst_epsilon"] is None and report["sites"]["central"]["epsilon"] is None
    assert NO_DP in report["statement"] == report["statement"]
    assert "epsilon = infinity (no differential privacy)" in report["statement"]
    json.dumps(report, allow_nan=False)  # valid strict JSON


def test_report_worst_epsilon_over_sites():
    sites = {
        "site-0": SitePrivacy(epsilon=2.0, sample_rate=0.1, steps=10, noise_multiplier=1.0),
        "site-1": SitePrivacy(epsilon=3.5, sample_rate=0.2, steps=10, noise_multiplier=1.0),
    }
    report = privacy_report(accountant="rdp", delta=1e-5, dp_enabled=True, sites=sites)
    assert report["worst_epsilon"] == 3.5 and report["unit"] == "patient"
    assert "3.5" in report["statement"]


def test_same_seed_same_noise_different_seed_different():
    a, b, c = (_trained(2, f"seed={s}") for s in (0, 0, 1))
    wa, wb, wc = (t.get_generator_weights() for t in (a, b, c))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa)


def test_state_dict_is_a_snapshot_not_a_view_of_live_tensors():
    trainer = LocalTrainer(tiny_config("train.steps=2"), fake_cache(), planned_steps=2)
    trainer.train_steps(1)
    state = trainer.state_dict()
    before = copy.deepcopy(state.tensors)
    trainer.train_steps(1)
    assert state.meta["steps_done"] == 1
    assert all(torch.equal(before[k], state.tensors[k]) for k in before)
