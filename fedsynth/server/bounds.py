"""How much one site may move the global generator, and how much its vote weighs.

Pure functions on name -> array dicts, used by ``fedsynth.server.strategy`` before Flower
aggregates. Why each exists (docs/robustness.md lists the probes):

- **Update norm.** FedAvg and the trimmed mean average values: one update of 1e30, or 100 x a
  normal one, drags the average anywhere. Like Flower's fixed-clipping wrappers
  (``DifferentialPrivacyServerSideFixedClipping``) the server bounds the L2 norm of each
  site's *update*: its weights minus the global weights it was sent. The bound is
  ``factor x lr x steps x sqrt(P)`` for P floating-point parameters: Adam moves each weight
  by about lr per step, so an honest site's update stays below ``lr x steps x sqrt(P)``
  (P counts the arrays exchanged: only the trainable set when ``privacy.trainable`` is not
  ``all``, whose replies the strategy checks against that set's keys and shapes)
  (measured: 0.5-0.6 of it on the smoke config, where gradients are consistent; noisier DP
  gradients move less). One factor fits any network size, learning rate and round length;
  a bound relative to ||w_global|| does not (on the smoke config an honest update is 0.5 %
  of ||w_global||, so a 100 x update would pass a ratio loose enough for longer rounds).
- **Weights.** A site's ``num-examples`` is its claim; it is capped at what the same site
  declared in its first round (a site cannot grow its vote later), or ignored ("equal").
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

Weights = Mapping[str, np.ndarray]


def _float_keys(weights: Weights) -> list[str]:
    return sorted(k for k, a in weights.items() if np.issubdtype(a.dtype, np.floating))


def update_norm(update: Weights, reference: Weights) -> float:
    """||update - reference||_2 over the floating-point arrays (same keys and shapes)."""
    return math.sqrt(
        sum(
            float(np.square(update[k].astype(np.float64) - reference[k]).sum())
            for k in _float_keys(reference)
        )
    )


def norm_bound(reference: Weights, factor: float, *, lr: float, steps: int) -> float:
    """The largest update norm accepted as is: ``factor x lr x steps x sqrt(P)``, P = number
    of floating-point values in ``reference``; inf if ``factor`` is 0 (bound off)."""
    if factor == 0:
        return math.inf
    params = sum(reference[k].size for k in _float_keys(reference))
    return factor * lr * steps * math.sqrt(params)


def clip_update(update: Weights, reference: Weights, bound: float) -> dict[str, np.ndarray]:
    """``reference + (update - reference) x min(1, bound / ||update - reference||)``.

    Arrays keep their dtypes; non-float arrays are returned unchanged.
    """
    norm = update_norm(update, reference)
    scale = 1.0 if norm <= bound else bound / norm
    out = dict(update)
    for k in _float_keys(reference):
        delta = update[k].astype(np.float64) - reference[k]
        out[k] = (reference[k] + scale * delta).astype(update[k].dtype)
    return out


def capped_weight(claimed: float, declared: float | None) -> float:
    """The aggregation weight of a site claiming ``claimed`` examples, given what it declared
    in its first round (None: this is its first round)."""
    return claimed if declared is None else min(claimed, declared)


def non_finite_keys(weights: Weights) -> list[str]:
    """Names of the floating-point arrays holding NaN or inf."""
    return [k for k in _float_keys(weights) if not np.isfinite(weights[k]).all()]
