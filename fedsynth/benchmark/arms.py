"""The benchmark's arms: how each trains its segmenter(s), all scored on the same test split.

An arm function takes the shared ``ArmContext`` and a seed and returns one ``ArmOutcome`` per
model it trained: per site for ``local``, ``local+synthetic`` and ``synthetic->finetune``;
one model (site ``"all"``) for ``pooled``, ``synthetic`` and ``fedavg``. The seed fixes the
initial weights (same seed, same initial network in every arm) and the slice sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsynth.benchmark.data import BenchmarkData
from fedsynth.benchmark.metrics import SegmentationScores
from fedsynth.benchmark.segmenter import build_segmenter
from fedsynth.benchmark.training import TrainSettings, evaluate, train_segmenter
from fedsynth.common.config import Config
from fedsynth.common.data.cache import SliceCache

ALL_SITES = "all"  # site of an arm that trains one model for everyone
NEEDS_SYNTHETIC = ("synthetic", "local+synthetic", "synthetic->finetune")


@dataclass
class ArmContext:
    cfg: Config
    data: BenchmarkData
    device: torch.device
    work_dir: Path  # scratch space (fedavg weights, Flower/Ray files)
    progress: bool = True
    # seed -> synthetic-only weights, shared by the synthetic and synthetic->finetune arms
    pretrained: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class ArmOutcome:
    """Scores of one trained model; predictions: subject -> uint8 (Z, S, S) for overlays."""

    arm: str
    site: str
    seed: int
    scores: SegmentationScores
    predictions: dict[str, np.ndarray]
    losses: list[float]


def _stream(seed: int, arm: str, site: str) -> int:
    """A reproducible sampling seed per (seed, arm, site)."""
    words = [seed, *arm.encode(), *site.encode()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _fresh(ctx: ArmContext, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_segmenter(ctx.cfg.benchmark.segmenter, ctx.cfg.benchmark.channels)


def _score(
    ctx: ArmContext, arm: str, site: str, seed: int, model: nn.Module, losses: list[float]
) -> ArmOutcome:
    scores, preds = evaluate(
        model, ctx.data.test, ctx.device, keep=ctx.cfg.benchmark.overlay_patients
    )
    return ArmOutcome(arm, site, seed, scores, preds, losses)


def _train_and_score(
    ctx: ArmContext, arm: str, site: str, seed: int, caches: list[SliceCache]
) -> ArmOutcome:
    model = _fresh(ctx, seed)
    settings = TrainSettings.from_config(ctx.cfg.benchmark, _stream(seed, arm, site))
    losses = train_segmenter(
        model, caches, settings, ctx.device, f"{arm} {site} s{seed}", ctx.progress
    )
    return _score(ctx, arm, site, seed, model, losses)


def _synthetic(ctx: ArmContext) -> SliceCache:
    if ctx.data.synthetic is None:  # load_benchmark_data loads it whenever these arms run
        raise ValueError("this arm needs the synthetic cohort, which was not loaded")
    return ctx.data.synthetic


def run_local(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    return [_train_and_score(ctx, "local", s, seed, [c]) for s, c in ctx.data.sites.items()]


def run_pooled(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    return [_train_and_score(ctx, "pooled", ALL_SITES, seed, list(ctx.data.sites.values()))]


def run_local_synthetic(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    syn = _synthetic(ctx)
    return [
        _train_and_score(ctx, "local+synthetic", s, seed, [c, syn])
        for s, c in ctx.data.sites.items()
    ]


def _pretrained(ctx: ArmContext, seed: int) -> tuple[nn.Module, list[float]]:
    """The synthetic-only model of ``seed``, trained once and reused by both arms."""
    model = _fresh(ctx, seed)
    losses: list[float] = []
    if seed not in ctx.pretrained:
        settings = TrainSettings.from_config(
            ctx.cfg.benchmark, _stream(seed, "synthetic", ALL_SITES)
        )
        losses = train_segmenter(
            model, [_synthetic(ctx)], settings, ctx.device, f"synthetic s{seed}", ctx.progress
        )
        ctx.pretrained[seed] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ctx.pretrained[seed])
    return model, losses


def run_synthetic(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    model, losses = _pretrained(ctx, seed)
    return [_score(ctx, "synthetic", ALL_SITES, seed, model, losses)]


def run_finetune(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    b, arm = ctx.cfg.benchmark, "synthetic->finetune"
    out = []
    for site, cache in ctx.data.sites.items():
        model, _ = _pretrained(ctx, seed)
        settings = TrainSettings.from_config(
            b, _stream(seed, arm, site), steps=b.finetune_steps, lr=b.finetune_lr
        )
        losses = train_segmenter(
            model, [cache], settings, ctx.device, f"finetune {site} s{seed}", ctx.progress
        )
        out.append(_score(ctx, arm, site, seed, model, losses))
    return out


def run_fedavg(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    from fedsynth.benchmark.fedavg.run import train_fedavg

    model = train_fedavg(ctx.cfg, seed, len(ctx.data.sites), ctx.work_dir / "fedavg")
    return [_score(ctx, "fedavg", ALL_SITES, seed, model, [])]


ARMS: dict[str, Callable[[ArmContext, int], list[ArmOutcome]]] = {
    "local": run_local,
    "pooled": run_pooled,
    "synthetic": run_synthetic,
    "local+synthetic": run_local_synthetic,
    "synthetic->finetune": run_finetune,
    "fedavg": run_fedavg,
}
