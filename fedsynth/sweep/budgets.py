"""The budgets of a privacy sweep: parsing ``--epsilons``, their labels, the config at each,
and which benchmark arms run once (real data) or per budget (synthetic data).

Shared by the sweep's runner (``run.py``) and its summary (``summary.py``), which otherwise
would import each other.
"""

from __future__ import annotations

import math
from dataclasses import replace

from fedsynth.common.config import Config
from fedsynth.common.errors import ConfigError

REAL_ARMS = ("local", "pooled")  # need no generator: run once for the whole sweep
SYNTHETIC_ARMS = ("synthetic", "local+synthetic")  # rerun for every budget


def parse_epsilons(text: str) -> list[float]:
    """'inf,50,10' -> [inf, 50.0, 10.0]; every value > 0, no duplicates."""
    values: list[float] = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ConfigError("--epsilons", f"{item!r} is not a positive number or 'inf'")
        if value in values:
            raise ConfigError("--epsilons", f"{item} is listed twice")
        values.append(value)
    if not values:
        raise ConfigError("--epsilons", "give at least one budget, e.g. inf,10,2")
    return values


def label(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def budget_config(cfg: Config, epsilon: float) -> Config:
    """The base config at one budget: epsilon = inf means DP off."""
    if math.isinf(epsilon):
        privacy = replace(cfg.privacy, enabled=False)
    else:
        privacy = replace(cfg.privacy, enabled=True, target_epsilon=epsilon)
    return replace(cfg, privacy=privacy)
