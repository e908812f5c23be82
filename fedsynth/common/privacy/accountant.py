"""The privacy accountant: one per site, composing every DP step it ever took.

A thin, serialisable layer over Opacus's accountants. The state is the mechanism history
``[(noise_multiplier, sample_rate, steps), ...]`` exactly as the accountant saw it, so anyone
can recompute epsilon from it (docs/privacy.md); nothing else is needed to restore it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedsynth.common.errors import ConfigError, PrivacyBudgetError

ACCOUNTANTS = ("rdp", "prv")
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS
# get_noise_multiplier stops once epsilon is within its tolerance below the target; this
# relative slack only absorbs float round-off when the same history is re-evaluated.
_BUDGET_SLACK = 1e-9


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    # Opacus's compute_rdp is linear in steps; caching the one-step curve per mechanism
    # makes re-evaluating a growing history cheap (it is called before and after each chunk).
    return np.asarray(
        compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS)
    )


@functools.lru_cache(maxsize=1024)
def _epsilon(kind: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    if kind == "rdp":
        # Exactly RDPAccountant.get_epsilon: sum the RDP curves, convert at the best order.
        rdp = sum(n * _rdp_per_step(q, nm) for nm, q, n in history)
        with warnings.catch_warnings():
            # "Optimal order is the largest alpha": the bound is then merely conservative.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
        return float(eps)
    acc = create_accountant(mechanism=kind)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


class PrivacyAccountant:
    """Composes subsampled Gaussian mechanisms and enforces a target epsilon at ``delta``.

    ``kind`` is "rdp" (Renyi DP, Opacus RDPAccountant) or "prv" (privacy random variables,
    Opacus PRVAccountant). ``target_epsilon`` None means no budget is enforced.
    """

    def __init__(self, *, kind: str, delta: float, target_epsilon: float | None):
        if kind not in ACCOUNTANTS:
            raise ConfigError("privacy.accountant", f"must be one of {ACCOUNTANTS}, got {kind!r}")
        self.kind = kind
        self.delta = float(delta)
        self.target_epsilon = target_epsilon
        self.history: list[tuple[float, float, int]] = []

    @property
    def steps(self) -> int:
        """Number of mechanism invocations composed so far."""
        return sum(n for _, _, n in self.history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` invocations of one subsampled Gaussian mechanism."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            nm, q, n = self.history[-1]
            self.history[-1] = (nm, q, n + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, history: list[tuple[float, float, int]] | None = None) -> float:
        """Epsilon at ``self.delta`` of ``history`` (default: what was recorded); 0 if empty."""
        history = self.history if history is None else history
        if not history:
            return 0.0
        return _epsilon(self.kind, tuple(history), self.delta)

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon if ``steps`` more invocations of the given mechanism were recorded."""
        extra = (float(noise_multiplier), float(sample_rate), int(steps))
        return self.epsilon(self.history + [extra]) if steps > 0 else self.epsilon()

    def check_budget(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Raise PrivacyBudgetError if ``steps`` more steps would exceed the target epsilon."""
        if self.target_epsilon is None:
            return
        eps = self.epsilon_after(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        if eps > self.target_epsilon * (1 + _BUDGET_SLACK):
            raise PrivacyBudgetError(
                f"taking {steps} more DP steps would reach epsilon = {eps:.3f} > the target "
                f"privacy.target_epsilon = {self.target_epsilon} (delta = {self.delta}); "
                f"{self.steps} steps already taken. Raise the target, or train fewer steps."
            )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; ``load_state_dict`` restores it exactly."""
        return {
            "accountant": self.kind,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "history": [
                {"noise_multiplier": nm, "sample_rate": q, "steps": n} for nm, q, n in self.history
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("accountant") != self.kind:
            raise ConfigError(
                "privacy.accountant",
                f"saved accountant is {state.get('accountant')!r} but the config asks for "
                f"{self.kind!r}; a site cannot switch accountants mid-run",
            )
        self.history = [
            (float(h["noise_multiplier"]), float(h["sample_rate"]), int(h["steps"]))
            for h in state["history"]
        ]

    def __repr__(self) -> str:
        eps = self.epsilon()
        return f"PrivacyAccountant({self.kind}, steps={self.steps}, epsilon={eps:.3g}, delta={self.delta})"
