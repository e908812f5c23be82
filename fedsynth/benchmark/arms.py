"""The benchmark's arms: how each trains its segmenter(s), all scored on the same test split.

An arm function takes the shared ``ArmContext`` and a seed and returns one ``ArmOutcome`` per
model it trained: per site for ``local``, ``local+synthetic`` and ``synthetic->finetune``;
one model (site ``"all"``) for ``pooled``, ``synthetic``, ``public-only`` and ``fedavg``. The
seed fixes the initial weights (same seed, same initial network in every arm), the slice
sampling and the validation patients each site holds out of its training patients (the same
ones in every arm for a seed: ``training.split_validation``).
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
from fedsynth.benchmark.postprocess import choose_min_voxels
from fedsynth.benchmark.segmenter import segmenter_for
from fedsynth.benchmark.training import (
    LearningCurve,
    TrainSettings,
    evaluate,
    split_validation,
    train_segmenter,
    validation_pairs,
)
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
    # seed -> synthetic-only weights and curve, shared by synthetic and synthetic->finetune
    pretrained: dict[int, tuple[dict[str, torch.Tensor], LearningCurve]] = field(
        default_factory=dict
    )


@dataclass
class ArmOutcome:
    """Scores of one trained model; predictions: subject -> uint8 (Z, S, S) for overlays;
    curve: its learning curve (train loss, validation Dice)."""

    arm: str
    site: str
    seed: int
    scores: SegmentationScores
    predictions: dict[str, np.ndarray]
    curve: LearningCurve


def _stream(seed: int, arm: str, site: str) -> int:
    """A reproducible sampling seed per (seed, arm, site)."""
    words = [seed, *arm.encode(), *site.encode()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _fresh(ctx: ArmContext, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return segmenter_for(ctx.cfg.benchmark)


def _score(
    ctx: ArmContext, arm: str, site: str, seed: int, model: nn.Module, curve: LearningCurve
) -> ArmOutcome:
    scores, preds = evaluate(
        model,
        ctx.data.test,
        ctx.device,
        spacings=ctx.data.test_spacings,
        keep=ctx.cfg.benchmark.overlay_patients,
        min_tumour_voxels=curve.min_tumour_voxels,
    )
    return ArmOutcome(arm, site, seed, scores, preds, curve)


def _train(
    ctx: ArmContext,
    model: nn.Module,
    arm: str,
    site: str,
    seed: int,
    caches: list[SliceCache],
    steps: int | None = None,
    lr: float | None = None,
) -> LearningCurve:
    """Train ``model`` on ``caches`` less the validation patients the seed holds out of them."""
    b = ctx.cfg.benchmark
    train, val = split_validation(caches, b.val_fraction, seed)
    settings = TrainSettings.from_config(b, _stream(seed, arm, site), steps=steps, lr=lr)
    return train_segmenter(
        model, train, val, settings, ctx.device, f"{arm} {site} s{seed}", ctx.progress
    )


def _train_and_score(
    ctx: ArmContext, arm: str, site: str, seed: int, caches: list[SliceCache]
) -> ArmOutcome:
    model = _fresh(ctx, seed)
    curve = _train(ctx, model, arm, site, seed, caches)
    return _score(ctx, arm, site, seed, model, curve)


def _synthetic(ctx: ArmContext) -> SliceCache:
    if ctx.data.synthetic is None:  # load_benchmark_data loads it whenever these arms run
        raise ValueError("this arm needs the synthetic cohort, which was not loaded")
    return ctx.data.synthetic


def per_site(ctx: ArmContext) -> dict[str, SliceCache]:
    """The sites per-site arms train a model for: every site, or with ``benchmark.sites:
    smallest`` only the site with the fewest patients (the one that needs help most)."""
    sites = ctx.data.sites
    if ctx.cfg.benchmark.sites == "smallest":
        name = min(sites, key=lambda s: (len(sites[s].patients), s))
        return {name: sites[name]}
    return sites


def run_local(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    return [_train_and_score(ctx, "local", s, seed, [c]) for s, c in per_site(ctx).items()]


def run_pooled(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    return [_train_and_score(ctx, "pooled", ALL_SITES, seed, list(ctx.data.sites.values()))]


def run_local_synthetic(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    syn = _synthetic(ctx)
    return [
        _train_and_score(ctx, "local+synthetic", s, seed, [c, syn])
        for s, c in per_site(ctx).items()
    ]


def _pretrained(ctx: ArmContext, seed: int) -> tuple[nn.Module, LearningCurve]:
    """The synthetic-only model of ``seed``, trained once and reused by both arms."""
    model = _fresh(ctx, seed)
    if seed not in ctx.pretrained:
        curve = _train(ctx, model, "synthetic", ALL_SITES, seed, [_synthetic(ctx)])
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ctx.pretrained[seed] = (state, curve)
    state, curve = ctx.pretrained[seed]
    model.load_state_dict(state)
    return model, curve


def run_synthetic(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    model, curve = _pretrained(ctx, seed)
    return [_score(ctx, "synthetic", ALL_SITES, seed, model, curve)]


def run_public_only(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    if ctx.data.public is None:  # load_benchmark_data loads it whenever this arm runs
        raise ValueError("the public-only arm needs the public synthetic cohort")
    return [_train_and_score(ctx, "public-only", ALL_SITES, seed, [ctx.data.public])]


def run_finetune(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    b, arm = ctx.cfg.benchmark, "synthetic->finetune"
    out = []
    for site, cache in per_site(ctx).items():
        model, _ = _pretrained(ctx, seed)
        curve = _train(ctx, model, arm, site, seed, [cache], b.finetune_steps, b.finetune_lr)
        out.append(_score(ctx, arm, site, seed, model, curve))
    return out


def run_fedavg(ctx: ArmContext, seed: int) -> list[ArmOutcome]:
    from fedsynth.benchmark.fedavg.run import train_fedavg

    _, val = split_validation(list(ctx.data.sites.values()), ctx.cfg.benchmark.val_fraction, seed)
    model, curve = train_fedavg(
        ctx.cfg, seed, len(ctx.data.sites), ctx.work_dir / "fedavg", val, ctx.device
    )
    if ctx.cfg.benchmark.postprocess:
        curve.min_tumour_voxels = choose_min_voxels(validation_pairs(model, val, ctx.device))
    return [_score(ctx, "fedavg", ALL_SITES, seed, model, curve)]


ARMS: dict[str, Callable[[ArmContext, int], list[ArmOutcome]]] = {
    "local": run_local,
    "pooled": run_pooled,
    "synthetic": run_synthetic,
    "local+synthetic": run_local_synthetic,
    "synthetic->finetune": run_finetune,
    "fedavg": run_fedavg,
    "public-only": run_public_only,
}
