"""One pix2pix iteration, as in the paper: forward, D step, freeze D, G step.

With DP (``dp_d``/``dp_g`` given) both steps are DP-SGD on the same sampled patients: the
per-patient losses are summed, Opacus computes per-sample (= per-patient) gradients, and
PatientDP clips and noises them (see fedsynth.common.privacy.dp). Without DP the mean loss is
backpropagated as usual, and on a GPU the forward passes and losses may run under bfloat16
autocast (``GanParts.amp_dtype``); never with DP, whose clipping arithmetic stays float32
(fedsynth.common.device).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fedsynth.common.device import autocast
from fedsynth.common.gan.losses import Pix2PixLoss
from fedsynth.common.privacy.dp import PatientDP


@dataclass(frozen=True)
class StepLosses:
    """Mean per-patient losses of one iteration (nan for an empty batch) and its size."""

    d: float
    g_adv: float
    g_l1: float  # already multiplied by train.l1_weight
    batch: int


@dataclass
class GanParts:
    """What a step needs. ``dp_d``/``dp_g`` None = no DP (then G, D are called directly)."""

    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: Pix2PixLoss
    dp_d: PatientDP | None = None
    dp_g: PatientDP | None = None
    amp_dtype: torch.dtype | None = None  # autocast for forward + loss; None = float32

    def __post_init__(self) -> None:
        if self.amp_dtype is not None and (self.dp_d is not None or self.dp_g is not None):
            raise ValueError("mixed precision is not used with DP (clipping must be float32)")

    def amp(self) -> contextlib.AbstractContextManager:
        """Autocast around a forward pass and its loss (a no-op in float32)."""
        return autocast(next(self.generator.parameters()).device, self.amp_dtype)

    @property
    def g(self) -> nn.Module:
        return self.dp_g.module if self.dp_g else self.generator

    @property
    def d(self) -> nn.Module:
        return self.dp_d.module if self.dp_d else self.discriminator


@contextlib.contextmanager
def frozen_discriminator(parts: GanParts) -> Iterator[None]:
    """No gradients for D's parameters (the G step only backpropagates THROUGH D).

    Opacus's backward hooks fire on every module the gradient passes, frozen or not, and
    would look for activations the frozen forward never stored: switch them off too.
    Afterwards each parameter gets back its OWN flag: parameters frozen on purpose (a
    fine-tuned subset) stay frozen.
    """
    params = list(parts.discriminator.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    if parts.dp_d is not None:
        parts.dp_d.module.disable_hooks()
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        if parts.dp_d is not None:
            parts.dp_d.module.enable_hooks()


def train_step(
    parts: GanParts, cond: torch.Tensor, real: torch.Tensor, views: int = 1
) -> StepLosses:
    """One iteration on V views of B patients: cond (V*B, 7, S, S) one-hot, real
    (V*B, 4, S, S) in [-1, 1], view-major (rows v*B .. v*B + B - 1 are view v of patients
    0 .. B-1). B may be 0 (empty Poisson sample): with DP both networks still get a
    noise-only update, without DP nothing changes.

    Views ("augmentation multiplicity", De et al. 2022): a patient's losses are averaged
    over its V views BEFORE its gradient is clipped, so the patient still contributes one
    clipped gradient per step and the privacy cost is unchanged (docs/privacy.md).
    """
    if cond.shape[0] % views:
        raise ValueError(f"{cond.shape[0]} rows are not {views} views of the same patients")
    batch = cond.shape[0] // views
    if batch == 0:
        return _empty_step(parts)
    with parts.amp():
        fake = parts.g(cond)  # forward
    loss_d = discriminator_step(parts, cond, real, fake.detach(), views)  # D step
    with frozen_discriminator(parts):  # freeze D
        g_adv, g_l1 = generator_step(parts, cond, real, fake, views)  # G step
    return StepLosses(loss_d, g_adv, g_l1, batch)


def discriminator_step(
    parts: GanParts, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, views: int = 1
) -> float:
    """Update D on real pairs (-> real) and fake pairs (-> fake); returns the mean D loss.

    Real and fake pairs go through D as ONE batch of 2VB, so Opacus yields 2VB per-sample
    gradients; PatientDP sums the 2V entries of patient i (its real and fake term of every
    view, each weighted 1/V) before clipping: all of them belong to patient i.
    """
    rows = cond.shape[0]
    batch = rows // views
    parts.opt_d.zero_grad(set_to_none=True)
    with parts.amp():
        logits = parts.d(torch.cat([cond, cond]), torch.cat([real, fake]))
        terms = parts.loss.discriminator_terms(logits, rows).float() / views
    if parts.dp_d is not None:
        _backward(terms.sum())
        parts.dp_d.privatise(batch, fold=2 * views)
    else:
        (terms.sum() / batch).backward()
    parts.opt_d.step()
    return float(terms.detach().sum() / batch)


def generator_step(
    parts: GanParts, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, views: int = 1
) -> tuple[float, float]:
    """Update G through the frozen D: fool D on (cond, fake) and stay close to real in L1.
    Per patient, the loss is the mean over its ``views`` rows (see train_step)."""
    parts.opt_g.zero_grad(set_to_none=True)
    with parts.amp():
        adv, l1 = parts.loss.generator(parts.d(cond, fake), fake, real)
    adv, l1 = adv.float(), l1.float()
    per_row = (adv + l1) / views
    batch = cond.shape[0] // views
    if parts.dp_g is not None:
        _backward(per_row.sum())
        parts.dp_g.privatise(batch, fold=views)
    else:
        (per_row.sum() / batch).backward()
    parts.opt_g.step()
    return float(adv.detach().mean()), float(l1.detach().mean())


def _backward(loss: torch.Tensor) -> None:
    # The condition tensors never require grad, so torch warns about every full backward
    # hook Opacus installs; the warning is expected here and says nothing useful.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()


def _empty_step(parts: GanParts) -> StepLosses:
    # DP-SGD must release an update every iteration, also when no patient was sampled;
    # skipping it would reveal that the batch was empty.
    if parts.dp_d is not None and parts.dp_g is not None:
        for dp, opt in ((parts.dp_d, parts.opt_d), (parts.dp_g, parts.opt_g)):
            opt.zero_grad(set_to_none=True)
            dp.privatise(0)
            opt.step()
    nan = math.nan
    return StepLosses(nan, nan, nan, 0)
