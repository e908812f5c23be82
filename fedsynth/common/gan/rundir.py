"""A training run directory: its layout, and the writers for its files.

RUN_DIR/
  config.yaml          resolved configuration (what was run)
  metrics.jsonl        one JSON line per evaluation: losses, epsilon so far, quality, time
  privacy.json         what the accountant recorded (fedsynth.common.privacy.report)
  checkpoints/         generator_<step>.safetensors (for synthesis) and
                       state_<step>.safetensors (everything to resume), latest.json
  samples/             step_<step>.png: label map | real | fake per contrast
  plots/               losses.png, quality.png
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.errors import CheckpointError, OutputExistsError
from fedsynth.common.io.atomic import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    save_figure,
)


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.privacy = self.root / "privacy.json"
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.plots = self.root / "plots"
        self.latest = self.checkpoints / "latest.json"

    def create(self, cfg: Config, overwrite: bool = False) -> None:
        """Start a fresh run; OutputExistsError if the folder has content and not ``overwrite``."""
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise OutputExistsError(self.root)
            shutil.rmtree(self.root)
        for d in (self.checkpoints, self.samples, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, config_to_yaml(cfg))

    def generator_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"generator_{step:07d}.safetensors"

    def state_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"state_{step:07d}.safetensors"

    def sample_png(self, step: int) -> Path:
        return self.samples / f"step_{step:07d}.png"

    def mark_latest(self, step: int) -> None:
        """Point latest.json at a step whose checkpoints are completely written."""
        atomic_write_json(
            self.latest,
            {
                "step": step,
                "generator": self.generator_checkpoint(step).name,
                "state": self.state_checkpoint(step).name,
            },
        )

    def latest_step(self) -> int:
        """Step of the newest complete checkpoint; CheckpointError if there is none."""
        try:
            return int(json.loads(self.latest.read_text())["step"])
        except FileNotFoundError as e:
            raise CheckpointError(self.latest, "no checkpoint to resume from") from e
        except (ValueError, KeyError) as e:
            raise CheckpointError(self.latest, f"unreadable: {e}") from e

    def append_metrics(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics, _finite(record))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line]

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop lines written after the checkpoint we restart from."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write_plots(self) -> None:
        plot_metrics(self.read_metrics(), self.plots)


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as null (epsilon null = no DP, see privacy.json)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def plot_metrics(records: list[dict[str, Any]], out: Path) -> None:
    """plots/losses.png (D, G adversarial, G L1 and epsilon vs step) and plots/quality.png
    (held-out MAE, PSNR, SSIM per contrast vs step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, key, label in zip(
        axes,
        ("loss_d", "loss_g_adv", "loss_g_l1", "epsilon"),
        ("D loss", "G adversarial", "G L1 (weighted)", "epsilon spent"),
        strict=True,
    ):
        ys = [r.get(key) for r in records]
        ax.plot(steps, [math.nan if y is None else y for y in ys], marker=".")
        ax.set_title(label if key != "epsilon" or any(ys) else "epsilon = infinity (no DP)")
        ax.set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, out / "losses.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, metric in zip(axes, ("mae", "psnr", "ssim"), strict=True):
        contrasts = sorted({c for r in records for c in r.get("quality", {})})
        for c in contrasts:
            ys = [r.get("quality", {}).get(c, {}).get(metric) for r in records]
            ax.plot(steps, [math.nan if y is None else y for y in ys], marker=".", label=c)
        ax.set_title(f"held-out {metric.upper()} (in brain)")
        ax.set_xlabel("step")
        if contrasts:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "quality.png", dpi=90)
    plt.close(fig)
