"""``privacy.json``: what was accounted, in one format for central and federated runs.

Format (all keys always present)::

    {
      "unit": "patient",
      "accountant": "rdp" | "prv",  # the one the noise was calibrated and budgeted with
      "target_epsilon": float | null,  # privacy.target_epsilon the noise was calibrated for
      "delta": float,
      "dp_enabled": bool,
      "reproducible_noise": bool,   # true: privacy.insecure_reproducible_noise (no guarantee
                                    # against anyone who knows the config; statement says so)
      "sites": {site: {"epsilon": float | null,  # by "accountant"
                       "epsilon_by_accountant": {"rdp": float, "prv": float} | null,
                       "step_noise_multiplier": float | null, "sample_rate": float,
                       "steps": int, "max_grad_norm": float | null,
                       "history": [{"noise_multiplier", "sample_rate", "steps"}, ...]}},
      "worst_epsilon": float | null,
      "worst_epsilon_by_accountant": {"rdp": float, "prv": float} | null,
      "statement": str
    }

``noise_multiplier`` and ``history`` are the mechanisms exactly as the accountant saw them
(the joint D+G mechanism, sigma / sqrt(2)); ``step_noise_multiplier`` is sigma, the noise
added in each of the D and G steps. ``null`` epsilon means infinity: no differential privacy.
``epsilon_by_accountant`` is the same history under every accountant of
``fedsynth.common.privacy.registry`` (PRV is tighter than RDP: the same history, a smaller
epsilon); ``epsilon`` and the budget are those of ``accountant``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.io.atomic import atomic_write_json
from fedsynth.common.privacy.registry import epsilons

NO_DP = "epsilon = infinity (no differential privacy)"
REPRODUCIBLE_NOISE = (
    "WARNING: privacy.insecure_reproducible_noise was on: the DP noise and the patient "
    "sampling were derived from the public config seed, so anyone who knows the config (the "
    "server included) can replay the training and remove the noise; the DP guarantee does "
    "not hold against them."
)


@dataclass(frozen=True)
class SitePrivacy:
    """What one site's accountant recorded. epsilon is math.inf without DP."""

    epsilon: float
    sample_rate: float
    steps: int  # accountant steps (one per training iteration: D and G step jointly)
    noise_multiplier: float | None = None  # as accounted (joint mechanism); None without DP
    step_noise_multiplier: float | None = None  # sigma added in each of the D and G steps
    max_grad_norm: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def epsilons(self, delta: float) -> dict[str, float] | None:
        """Epsilon of the history under every registered accountant; None without DP."""
        if not math.isfinite(self.epsilon):
            return None
        history = [(h["noise_multiplier"], h["sample_rate"], h["steps"]) for h in self.history]
        return epsilons(history, delta)

    def to_json(self, delta: float) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else None,
            "epsilon_by_accountant": self.epsilons(delta),
            "noise_multiplier": self.noise_multiplier,
            "step_noise_multiplier": self.step_noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "max_grad_norm": self.max_grad_norm,
            "history": self.history,
        }


def describe_epsilon(epsilon: float, delta: float) -> str:
    """Plain words for one epsilon: 'epsilon = 3.21 at delta = 1e-05' or the no-DP sentence."""
    if not math.isfinite(epsilon):
        return NO_DP
    return f"epsilon = {epsilon:.3g} at delta = {delta:g}"


def pretraining_sentence(pretrained_on: dict[str, Any] | None) -> str:
    """The public pre-training a generator started from, in words ("" if none)."""
    if not pretrained_on:
        return ""
    if "error" in pretrained_on:
        return (
            f"The generator started from {pretrained_on.get('init')}, whose public-data "
            f"provenance can no longer be read ({pretrained_on['error']})."
        )
    return (
        "The generator started from weights pre-trained without DP on public data "
        f"({pretrained_on.get('public_data') or 'a declared public cohort'}: "
        f"{pretrained_on.get('training_subjects')} subjects, manifest sha256 "
        f"{str(pretrained_on.get('manifest_sha256'))[:12]}..., {pretrained_on.get('steps')} "
        "steps), checked to share no subject with the sites; this guarantee does not cover "
        "that public data."
    )


def unreleased_sentence(unreleased: list[dict[str, Any]] | None) -> str:
    """Federated rounds that released no generator, and who was charged for them ("" if none)."""
    if not unreleased:
        return ""
    parts = []
    for u in unreleased:
        who = ", ".join(u["charged"]) if u["charged"] else "no site"
        parts.append(f"round {u['round']} ({u['reason']}; charged: {who})")
    return (
        "Rounds that released no generator, although the sites that trained in them were "
        f"charged and their epsilon above includes them: {'; '.join(parts)}."
    )


def privacy_statement(
    sites: dict[str, SitePrivacy],
    delta: float,
    dp_enabled: bool,
    reproducible_noise: bool = False,
    pretrained_on: dict[str, Any] | None = None,
    unreleased: list[dict[str, Any]] | None = None,
) -> str:
    """One line saying what was accounted, for people."""
    public = f"{pretraining_sentence(pretrained_on)} {unreleased_sentence(unreleased)}".strip()
    if not dp_enabled:
        statement = (
            f"{NO_DP}: the generator was trained without DP on the data of "
            f"{', '.join(sorted(sites)) or 'no site'} and may memorise patients."
        )
        return f"{statement} {public}".strip()
    worst = max((s.epsilon for s in sites.values()), default=0.0)
    names = ", ".join(sorted(sites)) or "no site"
    statement = (
        f"Each training patient is protected by patient-level differential privacy with "
        f"{describe_epsilon(worst, delta)} (worst of: {names}); both the discriminator and "
        "the generator steps were DP-SGD on Poisson-sampled patients, one slice each."
    )
    if reproducible_noise:
        statement = f"{statement} {REPRODUCIBLE_NOISE}"
    return f"{statement} {public}".strip()


def privacy_report(
    *,
    accountant: str,
    delta: float,
    dp_enabled: bool,
    sites: dict[str, SitePrivacy],
    reproducible_noise: bool = False,
    target_epsilon: float | None = None,
    pretrained_on: dict[str, Any] | None = None,
    unreleased_rounds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``reproducible_noise``: privacy.insecure_reproducible_noise was on (see the statement);
    ``target_epsilon``: privacy.target_epsilon the noise was calibrated for;
    ``pretrained_on``: the public pre-training the generator started from
    (``fedsynth.common.gan.init.public_pretraining``), None for a generator from scratch;
    ``unreleased_rounds``: federated rounds that released no generator (round, reason, the
    sites charged for it)."""
    worst = max((s.epsilon for s in sites.values()), default=0.0) if dp_enabled else math.inf
    reproducible_noise = reproducible_noise and dp_enabled
    entries = {name: s.to_json(delta) for name, s in sorted(sites.items())}
    by_accountant = [e["epsilon_by_accountant"] for e in entries.values()]
    worst_by = (
        {k: max(e[k] for e in by_accountant) for k in by_accountant[0]}
        if dp_enabled and by_accountant and all(by_accountant)
        else None
    )
    return {
        "unit": "patient",
        "accountant": accountant,
        "target_epsilon": target_epsilon if dp_enabled else None,
        "delta": delta,
        "dp_enabled": dp_enabled,
        "reproducible_noise": reproducible_noise,
        "sites": entries,
        "worst_epsilon": worst if math.isfinite(worst) else None,
        "worst_epsilon_by_accountant": worst_by,
        # Public data the generator was pre-trained on before any site's data (not covered
        # by the guarantee, and needing none: checked disjoint from the sites).
        "pretrained_on": pretrained_on,
        # Federated rounds that released no generator but charged the sites that trained.
        "unreleased_rounds": list(unreleased_rounds or []),
        "statement": privacy_statement(
            sites, delta, dp_enabled, reproducible_noise, pretrained_on, unreleased_rounds
        ),
    }


def write_privacy_json(
    path: str | Path,
    *,
    accountant: str,
    delta: float,
    dp_enabled: bool,
    sites: dict[str, SitePrivacy],
    reproducible_noise: bool = False,
    target_epsilon: float | None = None,
    pretrained_on: dict[str, Any] | None = None,
    unreleased_rounds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``privacy.json`` atomically and return what was written."""
    report = privacy_report(
        accountant=accountant, delta=delta, dp_enabled=dp_enabled, sites=sites,
        reproducible_noise=reproducible_noise, target_epsilon=target_epsilon,
        pretrained_on=pretrained_on, unreleased_rounds=unreleased_rounds,
    )  # fmt: skip
    atomic_write_json(path, report)
    return report
