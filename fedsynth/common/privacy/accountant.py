"""The privacy accountant: one per site, composing every DP step it ever took.

A thin, serialisable layer over Opacus's accountants. The state is the mechanism history
``[(noise_multiplier, sample_rate, steps), ...]`` exactly as the accountant saw it, so anyone
can recompute epsilon from it (docs/privacy.md); nothing else is needed to restore it.
"""

from __future__ import annotations

from typing import Any

from fedsynth.common.errors import ConfigError, PrivacyBudgetError
from fedsynth.common.privacy.registry import build_accountant, epsilon_of

# get_noise_multiplier stops once epsilon is within its tolerance below the target; this
# relative slack only absorbs float round-off when the same history is re-evaluated.
_BUDGET_SLACK = 1e-9


class PrivacyAccountant:
    """Composes subsampled Gaussian mechanisms and enforces a target epsilon at ``delta``.

    ``kind``: a name of ``fedsynth.common.privacy.registry.ACCOUNTANTS`` ("rdp": Renyi DP,
    "prv": privacy random variables). ``target_epsilon`` None means no budget is enforced.
    """

    def __init__(self, *, kind: str, delta: float, target_epsilon: float | None):
        build_accountant(kind)  # ConfigError naming privacy.accountant and the valid names
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
        return epsilon_of(self.kind, tuple(history), self.delta)

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
