"""One tiny central training run on the smoke phantoms, for the audit and report tests."""

from __future__ import annotations

from pathlib import Path

from fedsynth.central import train_central
from fedsynth.common.config import load_config
from fedsynth.common.rundir import RunDir
from helpers import SMOKE

TINY_TRAINING = (
    "train.steps=2",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "train.sample_every=2",
    "train.eval_slices=8",
    "train.sample_slices=2",
    "train.device=cpu",
)


def train_tiny_run(root: Path) -> RunDir:
    """A 2-step DP run of configs/smoke.yaml in ``root/run``, its cohort and caches in
    ``root/cache``."""
    cfg = load_config(SMOKE, [f"data.cache_dir={root / 'cache'}", *TINY_TRAINING])
    return train_central(cfg, root / "run", progress=False)
