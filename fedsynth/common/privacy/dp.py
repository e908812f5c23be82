"""DP-SGD with the patient as the protected unit: calibration, per-patient clipping, noise.

How a step stays patient-level: the PatientSampler includes each patient independently with
probability q (Poisson sampling) and takes exactly ONE slice per included patient, so in a
batch "per-sample" IS "per-patient". Each patient's gradient is clipped to ``max_grad_norm``
C, the clipped gradients are summed, Gaussian noise N(0, (sigma C)^2) is added and the sum is
divided by the EXPECTED batch size q * patients (not the realised one, which would leak it).
This is the Opacus DPOptimizer algorithm; it is written out here because the D step needs
the real and the fake term of one patient summed before clipping, and an empty Poisson batch
must still produce a noise-only update.

Joint accounting: the D step and the G step of one iteration use the SAME sampled patients,
each clipped to C with noise sigma C. Together they are one Gaussian mechanism on the
concatenated (D, G) gradient with sensitivity sqrt(2) C and noise sigma C per coordinate, i.e.
noise multiplier sigma / sqrt(2), subsampled once. The accountant records that, one step per
iteration (adding two mechanisms that share one sample would not be a valid bound).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy import per_sample
from fedsynth.common.privacy.registry import build_accountant

STEPS_PER_ITERATION = 2  # D step and G step share one sample: sqrt(2) joint sensitivity
# Grad-sample modes that run on these networks (fedsynth.common.privacy.grad_samplers):
# "fast" (the default): Opacus's hooks mode with fedsynth's Conv2d and ConvTranspose2d
# formulas (a grouped-convolution weight gradient instead of Opacus's unfolded copy; nothing
# unfolded for a conv whose weight is frozen). "hooks": Opacus's own formulas (plus
# ConvTranspose2d, which Opacus lacks). Both are exact once every input is contiguous:
# Opacus's unfold2d assumes the NCHW layout, and a channels-last input (one_hot(...).permute(
# 0, 3, 1, 2) is one) gave per-sample conv gradients off by ~100 % -- PatientDP therefore
# makes every input contiguous. Both compute per-sample gradients only for parameters with
# requires_grad=True. "functorch" (vmap over each layer) is kept as the reference. "ew"
# (expanded weights) cannot handle ConvTranspose. Opacus 1.6's ghost clipping has norm
# formulas only for Linear and Embedding (its fast gradient clipping materialises conv
# per-sample gradients anyway and adds a second backward pass): not used here.
# benchmarks/bench_dp_step.py times the modes; tests/test_privacy.py checks each against
# single-patient backward passes.
GRAD_SAMPLE_MODES = ("fast", "hooks", "functorch")
DEFAULT_GRAD_SAMPLE_MODE = "fast"
_CLIP_EPS = 1e-6  # as in Opacus: avoids dividing by a zero norm


def accounted_noise_multiplier(step_noise_multiplier: float) -> float:
    """Noise multiplier of the joint (D step + G step) mechanism: sigma / sqrt(2)."""
    return step_noise_multiplier / math.sqrt(STEPS_PER_ITERATION)


@functools.lru_cache(maxsize=64)  # pure and slow (a bisection over accountant evaluations)
def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    planned_steps: int,
    accountant: str = "rdp",
) -> float:
    """Noise multiplier sigma to add in EACH of the D and G steps (noise std = sigma * C).

    Chosen so that ``planned_steps`` iterations (each one joint mechanism with multiplier
    sigma / sqrt(2) at ``sample_rate``) spend at most ``target_epsilon`` at ``delta``.
    For the central trainer planned_steps = train.steps; for a site, rounds x local_steps.
    """
    if planned_steps <= 0:
        raise ConfigError("train.steps", f"planned DP steps must be > 0, got {planned_steps}")
    try:
        joint = build_accountant(accountant).noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
            steps=planned_steps,
        )  # fmt: skip
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise ConfigError(
            "privacy.target_epsilon",
            f"{target_epsilon} is unreachable with {planned_steps} steps at sample rate "
            f"{sample_rate:.3g} (delta {delta}): {e}",
        ) from e
    return joint * math.sqrt(STEPS_PER_ITERATION)


def check_delta(delta: float, patients: int, where: str = "") -> None:
    """delta must be well below 1/patients: a delta near 1/n permits leaking one patient."""
    if delta > 0.1 / patients:
        raise ConfigError(
            "privacy.delta",
            f"{delta:g} is not well below 1/patients = 1/{patients}{where}; "
            f"use at most {0.1 / patients:.2g} (e.g. 1e-5)",
        )


def sample_rate_for(batch_size: int, patients: int, where: str = "") -> float:
    """Poisson rate q = expected batch / patients; must be <= 1."""
    if patients <= 0:
        raise ConfigError("train.batch_size", f"no training patients{where}")
    if batch_size > patients:
        raise ConfigError(
            "train.batch_size",
            f"{batch_size} expected patients per step exceeds the {patients} patients{where}",
        )
    return batch_size / patients


class PatientDP:
    """Per-patient clipping and Gaussian noise for one network's gradients.

    ``module`` is wrapped for per-sample gradients (per_sample.wrap; the caller backpropagates
    the SUM of per-patient losses through ``self.module``, so grad_sample[i] is patient i's
    gradient). In the default "fast" mode the backward pass leaves ``.grad`` unset.
    Call ``privatise(batch)`` after backward and before the optimiser step; it replaces each
    parameter's ``.grad`` by (sum_i clip(g_i) + N(0, (sigma C)^2)) / expected_batch_size.

    Only parameters with ``requires_grad=True`` are privatised (clipped jointly, noised,
    updated); frozen ones get no per-sample gradient, no noise and no update. Freeze them
    BEFORE building the PatientDP: the wrapper decides at wrap time which layers get hooks.
    Tensor inputs of ``module`` are made contiguous (see GRAD_SAMPLE_MODES).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        generator: torch.Generator,
        grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    ):
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError("grad_sample_mode", f"must be one of {GRAD_SAMPLE_MODES}")
        if not any(p.requires_grad for p in module.parameters()):
            raise ConfigError(
                "privacy", f"{type(module).__name__} has no trainable parameter to privatise"
            )
        module.register_forward_pre_hook(_contiguous_inputs)
        self.module = per_sample.wrap(module, grad_sample_mode)
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator

    def params(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def privatise(self, batch_size: int, fold: int = 1) -> None:
        """Clip per patient, sum, add noise, average over the expected batch size.

        ``batch_size``: number of patients B in the batch (0 for an empty Poisson sample:
        the update is then noise only). ``fold``: the backward pass ran over ``fold * B``
        samples ordered ``[term 0 of patients 0..B-1, term 1 of patients 0..B-1, ...]``;
        the terms of each patient are summed before clipping (D step: real + fake).
        """
        params = self.params()
        per_patient = [self._per_patient_grad(p, batch_size, fold) for p in params]
        if batch_size > 0:
            norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_patient]).norm(dim=0)
            scale = (self.max_grad_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
        for p, g in zip(params, per_patient, strict=True):
            summed = torch.einsum("i,i...->...", scale, g) if batch_size > 0 else g.sum(0)
            noise = torch.normal(
                0.0,
                self.noise_multiplier * self.max_grad_norm,
                size=p.shape,
                generator=self.generator,
                device=p.device,
            )
            p.grad = (summed + noise) / self.expected_batch_size
            p.grad_sample = None

    @staticmethod
    def _per_patient_grad(p: nn.Parameter, batch_size: int, fold: int) -> torch.Tensor:
        if batch_size == 0:
            return torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            raise RuntimeError("no per-sample gradient: run backward through .module first")
        if gs.shape[0] != fold * batch_size:
            raise RuntimeError(
                f"per-sample gradient batch {gs.shape[0]} != {fold} x {batch_size} patients"
            )
        return gs.reshape(fold, batch_size, *p.shape).sum(0)


def _contiguous_inputs(_module: nn.Module, args: tuple) -> tuple:
    # Opacus's hooks-mode conv formula (unfold2d) assumes the NCHW layout; a channels-last
    # input would also make every activation after it channels-last (convs keep the format).
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
