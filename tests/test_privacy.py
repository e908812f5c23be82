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
from fedsynth.common.gan.step import GanParts, frozen_discriminator, train_step
from fedsynth.common.gan.trainer import LocalTrainer
from fedsynth.common.models.registry import build_discriminator, build_generator
from fedsynth.common.privacy.accountant import PrivacyAccountant
from fedsynth.common.privacy.dp import (
    GRAD_SAMPLE_MODES,
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


def _channels_last_condition(b: int, size: int) -> torch.Tensor:
    # one_hot(...).permute gives a channels-last tensor: Opacus's hooks-mode conv formula
    # assumed NCHW and got per-sample gradients ~100 % wrong until PatientDP made it contiguous.
    classes = torch.randint(0, 7, (b, size, size), generator=torch.Generator().manual_seed(0))
    cond = torch.nn.functional.one_hot(classes, 7).permute(0, 3, 1, 2).float()
    assert not cond.is_contiguous()
    return cond


def _check_per_sample(net, inputs, mode: str) -> None:
    """Per-sample gradients of ``mode`` equal single-sample backward passes (trainable
    parameters)."""
    reference = []
    trainable = [p for p in net.parameters() if p.requires_grad]
    for i in range(inputs[0].shape[0]):
        net.zero_grad()
        net(*(x[i : i + 1].contiguous() for x in inputs)).square().sum().backward()
        reference.append([p.grad.clone() for p in trainable])
    dp = PatientDP(net, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=2,
                   generator=torch.Generator(), grad_sample_mode=mode)  # fmt: skip
    dp.module(*inputs).square().sum().backward()
    for i, ref in enumerate(reference):
        for got, want in zip(_per_sample(trainable), ref, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-3, atol=1e-5 * want.abs().max())


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_per_sample_gradients_are_exact_on_the_default_networks(mode):
    # The full-size default U-Net (4 levels, 32..256 channels) and PatchGAN at 64 px, fed a
    # channels-last condition as the data pipeline makes it.
    from fedsynth.common.config import ModelConfig

    torch.manual_seed(0)
    g, d = build_generator(ModelConfig()), build_discriminator(ModelConfig())
    cond = _channels_last_condition(2, 64)
    _check_per_sample(g, (cond,), mode)
    image = torch.rand(2, 64, 64, 4).permute(0, 3, 1, 2)  # channels-last too
    _check_per_sample(d, (cond, image), mode)


def test_only_trainable_parameters_get_per_sample_gradients_noise_and_updates():
    cond, real = _batch()
    g, _ = _nets()
    frozen = [p for name, p in g.named_parameters() if "bias" not in name]
    for p in frozen:
        p.requires_grad_(False)
    before = [p.detach().clone() for p in frozen]
    dp = PatientDP(g, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=3,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    (dp.module(cond) - real).abs().sum().backward()
    assert all(getattr(p, "grad_sample", None) is None for p in frozen)
    dp.privatise(3)
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in dp.params()) and dp.params()
    torch.optim.SGD(g.parameters(), lr=1.0).step()
    assert all(torch.equal(p, b) for p, b in zip(frozen, before, strict=True))


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


def test_frozen_discriminator_restores_each_parameters_own_flag():
    parts = _parts(dp=False)
    params = list(parts.discriminator.parameters())
    params[0].requires_grad_(False)  # frozen on purpose (e.g. a fine-tuned subset)
    with frozen_discriminator(parts):
        assert not any(p.requires_grad for p in params)
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)


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


def test_dp_runs_of_one_config_release_different_generators():
    # The noise comes from a secret drawn per trainer, not from the (public) config seed.
    a, b = _trained(2), _trained(2)
    wa, wb = a.get_generator_weights(), b.get_generator_weights()
    assert any(not np.array_equal(wa[k], wb[k]) for k in wa)
    assert a.randomness.secret != b.randomness.secret and not a.randomness.reproducible
    assert "secret" not in repr(a.randomness).replace("secret=<hidden>", "")


def test_public_seed_noise_only_without_dp_or_when_labelled_insecure():
    for over in ("privacy.enabled=false", "privacy.insecure_reproducible_noise=true"):
        a, b, c = (_trained(2, over, f"seed={s}") for s in (0, 0, 1))
        wa, wb, wc = (t.get_generator_weights() for t in (a, b, c))
        assert all(np.array_equal(wa[k], wb[k]) for k in wa)
        assert any(not np.array_equal(wa[k], wc[k]) for k in wa)
        assert a.randomness.reproducible


def test_state_dict_is_a_snapshot_not_a_view_of_live_tensors():
    trainer = LocalTrainer(tiny_config("train.steps=2"), fake_cache(), planned_steps=2)
    trainer.train_steps(1)
    state = trainer.state_dict()
    before = copy.deepcopy(state.tensors)
    trainer.train_steps(1)
    assert state.meta["steps_done"] == 1
    assert all(torch.equal(before[k], state.tensors[k]) for k in before)


def test_accountants_come_from_a_registry_and_prv_calibrates_less_noise():
    from fedsynth.common.privacy.registry import ACCOUNTANTS, build_accountant

    assert set(ACCOUNTANTS) == {"rdp", "prv"}
    with pytest.raises(ConfigError, match="privacy.accountant.*rdp, prv"):
        build_accountant("gdp")
    with pytest.raises(ConfigError, match="privacy.accountant"):
        tiny_config("privacy.accountant=gdp")
    kw = dict(target_epsilon=5.0, delta=1e-5, sample_rate=0.2, planned_steps=100)
    rdp = calibrate_noise_multiplier(**kw, accountant="rdp")
    prv = calibrate_noise_multiplier(**kw, accountant="prv")
    assert prv < rdp  # the tighter accountant reaches the target with less noise
    acc = PrivacyAccountant(kind="prv", delta=1e-5, target_epsilon=5.0)
    acc.step(noise_multiplier=accounted_noise_multiplier(prv), sample_rate=0.2, steps=100)
    assert 4.5 < acc.epsilon() <= 5.0 * 1.0001


def test_privacy_json_reports_the_target_and_epsilon_under_both_accountants():
    trainer = _trained(4)
    report = privacy_report(accountant="rdp", delta=trainer.cfg.privacy.delta, dp_enabled=True,
                            sites={"central": trainer.privacy()}, target_epsilon=50.0)  # fmt: skip
    site = report["sites"]["central"]
    by = site["epsilon_by_accountant"]
    assert report["target_epsilon"] == 50.0 and report["accountant"] == "rdp"
    assert by["rdp"] == pytest.approx(site["epsilon"]) and 0 < by["prv"] < by["rdp"]
    assert report["worst_epsilon_by_accountant"] == by
    json.dumps(report, allow_nan=False)


def test_reproducible_noise_and_cohort_label_maps_are_stated_in_words(tmp_path):
    from fedsynth.common.privacy.report import REPRODUCIBLE_NOISE
    from fedsynth.report.sections import privacy_section as report_privacy
    from fedsynth.synthesis.datasheet import _from_report as datasheet_privacy

    trainer = _trained(2, "privacy.insecure_reproducible_noise=true")
    report = privacy_report(accountant="rdp", delta=1e-5, dp_enabled=True, reproducible_noise=True,
                            sites={"central": trainer.privacy()})  # fmt: skip
    assert report["reproducible_noise"] and REPRODUCIBLE_NOISE in report["statement"]
    (tmp_path / "privacy.json").write_text(json.dumps(report))
    assert "does not hold" in datasheet_privacy(report)["statement"]
    (tmp_path / "config.yaml").write_text("synthesis:\n  label_source: cohort\n")
    body = report_privacy(tmp_path).body
    assert "does not hold" in body and "REAL patients' label maps" in body
    (tmp_path / "config.yaml").write_text("synthesis:\n  label_source: atlas\n")
    assert "REAL patients" not in report_privacy(tmp_path).body


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_per_sample_gradient_formula_matches_single_sample_backward(groups):
    # fedsynth's hooks formula for ConvTranspose2d (Opacus has none), on odd sizes, grouped,
    # with output_padding and an even kernel.
    from opacus import GradSampleModule

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=groups),
        torch.nn.LeakyReLU(0.2),
        torch.nn.ConvTranspose2d(6, 2, 4, stride=2, padding=1, bias=False),
    )
    x, twin = torch.randn(2, 4, 9, 7), copy.deepcopy(net)
    _check_per_sample(net, (x,), "hooks")
    _check_per_sample(twin, (x,), "fast")
    assert torch.nn.ConvTranspose2d not in GradSampleModule.GRAD_SAMPLERS  # global table intact


@pytest.mark.parametrize("frozen_weights", [False, True])
def test_fast_conv2d_formula_matches_single_sample_backward(frozen_weights):
    # Every path of grad_samplers.conv2d_grad_sample: the grouped convolution (input
    # channels per group a multiple of 8), the same with zero-padded input channels (7 and
    # 11 channels, as the first layers of G and D), one call per sample (3 channels per
    # group, 2 groups); strided, dilated, grouped, even kernel; and frozen weights
    # (norm+bias fine-tuning: bias gradients only, nothing unfolded).
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(7, 16, 3, padding=1),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(16, 16, 4, stride=2, padding=1, groups=2),
        torch.nn.Conv2d(16, 11, 3, padding=2, dilation=2),
        torch.nn.Conv2d(11, 8, 4, stride=2, padding=1),
        torch.nn.Conv2d(8, 6, 3, padding=1, bias=False),
        torch.nn.Conv2d(6, 4, 3, padding=1, groups=2),
    )
    if frozen_weights:
        for name, p in net.named_parameters():
            p.requires_grad_(name.endswith("bias"))
    _check_per_sample(net, (torch.randn(3, 7, 13, 11),), "fast")
    if frozen_weights:
        assert all(getattr(p, "grad_sample", None) is None
                   for p in net.parameters() if not p.requires_grad)  # fmt: skip


def _clipped_sum(network, per_patient_loss, patients: int) -> tuple[list[torch.Tensor], float]:
    """(sum_i clip(g_i), C): g_i the gradient of patient i's loss alone (its own backward
    pass) over the trainable parameters of network; C between the two largest norms, so
    that one patient is scaled down and the others are used as they are."""
    params = [p for p in network.parameters() if p.requires_grad]
    grads = [torch.autograd.grad(per_patient_loss(i), params) for i in range(patients)]
    norms = [float(torch.cat([g.flatten() for g in gi]).norm()) for gi in grads]
    high = sorted(norms)[-2:]
    clip = (high[0] + high[1]) / 2
    total = [torch.zeros_like(p) for p in params]
    for gi, norm in zip(grads, norms, strict=True):
        scale = min(1.0, clip / (norm + 1e-6))
        total = [t + scale * g for t, g in zip(total, gi, strict=True)]
    return total, clip


@pytest.mark.parametrize("trainable", ["all", "norm+bias"])
@pytest.mark.parametrize("mode", ["fast", "hooks"])
def test_dp_step_is_the_clipped_sum_of_single_patient_gradients(mode, trainable):
    # One full DP iteration (D step then G step) on the demo networks, 2 views of 3 patients,
    # no noise, a clip that binds for some patients only: each network's update must be the sum
    # of its per-patient gradients, each from that patient's own backward pass (real + fake
    # terms of all its views for D) and clipped to C, divided by the expected batch size.
    from fedsynth.common.config import load_config
    from fedsynth.common.gan.trainable import select_trainable

    cfg = load_config("configs/demo.yaml", [])
    torch.manual_seed(0)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    select_trainable(g, trainable)
    b, views, expected = 3, 2, 2.5
    cache = fake_cache(size=32)
    sampler = PatientSampler(cache, 1.0, 0.7, 0)
    cond, real = sampler.batch(sampler.sample(np.random.default_rng(0))[: b * views])
    g0, d0 = copy.deepcopy(g), copy.deepcopy(d)
    loss = Pix2PixLoss()
    rows = [[v * b + i for v in range(views)] for i in range(b)]

    fake0 = g0(cond).detach()

    def d_loss(i):
        r = rows[i]
        logits = d0(torch.cat([cond[r], cond[r]]), torch.cat([real[r], fake0[r]]))
        return loss.discriminator_terms(logits, len(r)).sum() / views

    want_d, clip_d = _clipped_sum(d0, d_loss, b)
    d_after = copy.deepcopy(d0)  # G's step sees D after its update
    with torch.no_grad():
        for p, s in zip(d_after.parameters(), want_d, strict=True):
            p -= s / expected
    for p in d_after.parameters():
        p.requires_grad_(False)

    def g_loss(i):
        r = rows[i]
        fake = g0(cond[r])
        adv, l1 = loss.generator(d_after(cond[r], fake), fake, real[r])
        return (adv + l1).sum() / views

    want_g, clip_g = _clipped_sum(g0, g_loss, b)

    kw = dict(noise_multiplier=0.0, expected_batch_size=expected, generator=torch.Generator(),
              grad_sample_mode=mode)  # fmt: skip
    sgd = torch.optim.SGD
    parts = GanParts(
        generator=g, discriminator=d, loss=loss,
        opt_g=sgd([p for p in g.parameters() if p.requires_grad], lr=1.0),
        opt_d=sgd(d.parameters(), lr=1.0),
        dp_d=PatientDP(d, max_grad_norm=clip_d, **kw), dp_g=PatientDP(g, max_grad_norm=clip_g, **kw),
    )  # fmt: skip
    train_step(parts, cond, real, views=views)
    for net, before, want in ((d, d0, want_d), (g, g0, want_g)):
        trained = [(p, q) for p, q in zip(net.parameters(), before.parameters(), strict=True)
                   if p.requires_grad]  # fmt: skip
        assert len(trained) == len(want)
        got = torch.cat([(q.detach() - p.detach()).flatten() for p, q in trained])
        ref = torch.cat([w.flatten() for w in want]) / expected
        assert float((got - ref).norm() / ref.norm()) < 1e-4  # float32 round-off: ~1e-6
        frozen = [(p, q) for p, q in zip(net.parameters(), before.parameters(), strict=True)
                  if not p.requires_grad]  # fmt: skip
        assert all(torch.equal(p, q) for p, q in frozen)
