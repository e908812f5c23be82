"""The generator the server releases: the aggregate of the last round, or an exponential
moving average (EMA) of the aggregates over rounds (``federation.release_ema``).

Why an average: under DP every round's aggregate carries fresh Gaussian noise from each
site, and adversarial training jitters from round to round; an average of recent iterates
is a smoother generator (Yazici et al. 2019). Why it is free: the average is computed by the
server from the aggregates alone, which are functions of the sites' DP-accounted replies,
so it is post-processing and costs no privacy (docs/privacy.md). Only the release changes:
the sites keep training from the last aggregate, not from the average.

After round r the release is EMA_r = EMA_{r-1} + (1 - d_r) (A_r - EMA_{r-1}), started at
the first aggregate, with d_r = ``warmed_decay(release_ema, n)`` (n aggregates so far: a
young average follows the latest aggregate closely). A round that did not aggregate leaves
the average as it was (its generator did not change). Arrays where A_r equals the average
(frozen parameters) stay bit-for-bit: the update adds an exact zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsynth.common.gan.ema import warmed_decay

Weights = Mapping[str, np.ndarray]


class ReleaseEMA:
    """EMA of the aggregated generators over rounds; ``decay`` 0 releases the last aggregate.

    ``state``: (averaged weights, aggregates averaged) of a resumed run, from its last
    committed round (``fedsynth.server.checkpointing``)."""

    def __init__(self, decay: float, state: tuple[Weights, int] | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"release EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.average: dict[str, np.ndarray] | None = None
        self.rounds = 0  # aggregates averaged so far
        if state is not None and self.enabled:
            self.average = {k: np.array(v, copy=True) for k, v in state[0].items()}
            self.rounds = int(state[1])

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    def update(self, aggregate: Weights, aggregated: bool) -> dict[str, np.ndarray]:
        """Fold in this round's global generator (``aggregated`` False: unchanged, skipped);
        return the generator to release after it."""
        if not self.enabled:
            return dict(aggregate)
        if self.average is None:
            self.average = {k: np.array(v, copy=True) for k, v in aggregate.items()}
            self.rounds = 1 if aggregated else 0
        elif aggregated:
            keep = warmed_decay(self.decay, self.rounds)
            for k, a in aggregate.items():
                avg = self.average[k]
                step = (1.0 - keep) * (a.astype(np.float64) - avg)
                self.average[k] = (avg + step).astype(avg.dtype)
            self.rounds += 1
        return {k: v.copy() for k, v in self.average.items()}
