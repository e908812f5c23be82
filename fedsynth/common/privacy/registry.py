"""Privacy accountants by name: "rdp" and "prv", each composing subsampled Gaussian mechanisms.

Adding an accountant is one class with ``epsilon`` and ``noise_multiplier`` plus one line in
``ACCOUNTANTS``; ``privacy.accountant`` takes its choices from here. Each wraps Opacus:

- ``rdp``: Renyi DP (Mironov 2017; Opacus ``RDPAccountant``), a conservative upper bound;
- ``prv``: privacy random variables (Gopi et al. 2021; Opacus ``PRVAccountant``), a
  numerically tight bound: the same target epsilon with less noise.

A history is ``[(noise_multiplier, sample_rate, steps), ...]``. Opacus is imported inside the
methods: it imports torch, and ``fedsynth.common.config`` (read by every CLI ``--help``)
imports this module for the names.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedsynth.common.errors import ConfigError

History = Sequence[tuple[float, float, int]]


class Accountant(Protocol):
    name: str

    def epsilon(self, history: History, delta: float) -> float: ...

    def noise_multiplier(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float: ...


def _calibrate(name: str, target_epsilon: float, delta: float, sample_rate: float, steps: int):
    from opacus.accountants.utils import get_noise_multiplier

    return get_noise_multiplier(
        target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
        steps=steps, accountant=name,
    )  # fmt: skip


class RDP:
    """Renyi DP over Opacus's default orders, converted at the best order."""

    name = "rdp"

    def epsilon(self, history: History, delta: float) -> float:
        from opacus.accountants.analysis.rdp import get_privacy_spent

        rdp = sum(n * _rdp_per_step(q, nm) for nm, q, n in history)
        with warnings.catch_warnings():
            # "Optimal order is the largest alpha": the bound is then merely conservative.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            eps, _ = get_privacy_spent(orders=rdp_orders(), rdp=rdp, delta=delta)
        return float(eps)

    def noise_multiplier(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        return _calibrate(self.name, target_epsilon, delta, sample_rate, steps)


class PRV:
    """Privacy random variables: numerically composed privacy loss distributions."""

    name = "prv"

    def epsilon(self, history: History, delta: float) -> float:
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
        acc.history = [(float(nm), float(q), int(n)) for nm, q, n in history]
        return float(acc.get_epsilon(delta=delta))

    def noise_multiplier(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        return _calibrate(self.name, target_epsilon, delta, sample_rate, steps)


ACCOUNTANTS: dict[str, type[Accountant]] = {"rdp": RDP, "prv": PRV}


def build_accountant(name: str, key: str = "privacy.accountant") -> Accountant:
    """The accountant called ``name``; ConfigError naming ``key`` and the valid names."""
    if name not in ACCOUNTANTS:
        raise ConfigError(key, f"unknown accountant {name!r}; valid: {', '.join(ACCOUNTANTS)}")
    return ACCOUNTANTS[name]()


def rdp_orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    # Opacus's compute_rdp is linear in steps; caching the one-step curve per mechanism
    # makes re-evaluating a growing history cheap (it is called before and after each chunk).
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(
        compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=rdp_orders())
    )


@functools.lru_cache(maxsize=1024)
def epsilon_of(name: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Cached ``build_accountant(name).epsilon(history, delta)``; 0 for an empty history."""
    return build_accountant(name).epsilon(history, delta) if history else 0.0


def epsilons(history: History, delta: float) -> dict[str, float]:
    """Epsilon of ``history`` at ``delta`` under every registered accountant."""
    key = tuple((float(nm), float(q), int(n)) for nm, q, n in history)
    return {name: epsilon_of(name, key, delta) for name in ACCOUNTANTS}
