"""Server-side look at the global generator: sample grid and held-out image quality.

The server reads only the held-out ("test") split of the config's cohort, which no site
trains on; it never touches site data. It reuses the central trainer's evaluation
(``fedsynth.common.gan.evaluation``): the same fixed slices, metrics and grid, so federated
and central runs compare directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsynth.common.config import Config
from fedsynth.common.data.cache import site_slices
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.data.datasets import fixed_eval_slices
from fedsynth.common.gan.evaluation import eval_indices, evaluate_quality, save_sample_grid
from fedsynth.common.models.registry import build_generator
from fedsynth.common.rundir import RunDir


def due(round_: int, rounds: int, local_steps: int, every: int) -> bool:
    """True when round ``round_`` crosses a multiple of ``every`` local steps, or is the last."""
    return (
        round_ == rounds or (round_ * local_steps) // every > ((round_ - 1) * local_steps) // every
    )


class HeldOutEvaluator:
    """Callable (round, generator weights) -> held-out metrics (empty when not due).

    Like central training, counted in local steps: writes ``samples/step_<round x
    local_steps>.png`` when a round crosses ``train.sample_every`` steps, and scores
    MAE/PSNR/SSIM inside the brain on ``train.eval_slices`` fixed held-out slices when it
    crosses ``train.eval_every``; both also after the last round.
    """

    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self._test: Any = None
        self._generator: Any = None

    def _data(self) -> tuple[Any, np.ndarray, np.ndarray]:
        if self._test is None:
            self._test = site_slices(
                self.cfg, list(load_split(resolve_cohort(self.cfg)).test), "test"
            )
        t = self.cfg.train
        return (
            self._test,
            fixed_eval_slices(self._test, t.sample_slices, self.cfg.seed),
            eval_indices(self._test, t.eval_slices, self.cfg.seed),
        )

    def generate_fn(self, weights: dict[str, np.ndarray]) -> Any:
        """cond (B, 7, S, S) -> images (B, 4, S, S) with the given generator weights."""

        if self._generator is None:
            self._generator = build_generator(self.cfg.model).eval()
        self._generator.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
        )

        @torch.no_grad()
        def generate(cond: torch.Tensor) -> torch.Tensor:
            return torch.cat([self._generator(cond[i : i + 32]) for i in range(0, len(cond), 32)])

        return generate

    def quality(self, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        """{"quality": {contrast: {mae, psnr, ssim}}, "mean": {...}, "slices": n}."""
        test, _, scored = self._data()
        return evaluate_quality(self.generate_fn(weights), test, scored)

    def __call__(self, round_: int, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        fed, t = self.cfg.federation, self.cfg.train
        if due(round_, fed.rounds, fed.local_steps, t.sample_every):
            test, grid, _ = self._data()
            save_sample_grid(
                self.generate_fn(weights),
                test,
                grid,
                RunDir(self.run_dir).sample_png(round_ * fed.local_steps),
                title=f"{self.cfg.name}: global generator after round {round_}",
            )
        if not due(round_, fed.rounds, fed.local_steps, t.eval_every):
            return {}
        return self.quality(weights)
