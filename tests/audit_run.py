"""One tiny central training run on the smoke phantoms, for the audit and report tests."""

from __future__ import annotations

from pathlib import Path

from fedsynth.common.config import load_config

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def train_tiny_run(root: Path):
    """A 2-step DP run of configs/smoke.yaml with its caches under ``root``; returns RunDir."""
    from fedsynth.central import train_central

    cfg = load_config(
        SMOKE,
        [
            f"data.cache_dir={root / 'cache'}",
            "train.steps=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.sample_every=2",
            "train.eval_slices=8",
            "train.sample_slices=2",
            "train.device=cpu",
        ],
    )
    return train_central(cfg, root / "run", progress=False)
