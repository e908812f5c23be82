"""``fedsynth pretrain``: train G and D without DP on the PUBLIC cohort; write ``init.safetensors``.

RUN/
  config.yaml        the public-training config (public data, no DP, pretrain.* settings)
  metrics.jsonl      per evaluation: losses and public held-out MAE/PSNR/SSIM of the EMA G
  samples/           public held-out label maps | real | fake (EMA G)
  public.json        provenance: which public cohort (manifest hash), the disjointness check
  init.safetensors   EMA generator + discriminator + provenance: ``model.init=RUN``

The check that the public cohort shares no subject or image with the sites and the test
patients (pretrain.public.check_disjoint) runs before any training. Only the public
held-out patients are evaluated here: choosing settings on them leaks nothing private.
Not resumable: a pre-training takes minutes, and a rerun with the same config and seed
gives the same weights.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fedsynth.central import load_central_data
from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.data.datasets import fixed_eval_slices
from fedsynth.common.gan.ema import WeightEMA
from fedsynth.common.gan.evaluation import eval_indices, evaluate_quality, save_sample_grid
from fedsynth.common.gan.init import save_init
from fedsynth.common.gan.plots import plot_metrics
from fedsynth.common.gan.trainer import LocalTrainer
from fedsynth.common.io.atomic import atomic_write_json
from fedsynth.common.rundir import INIT_FILE, PUBLIC_DATA_FILE, RunDir
from fedsynth.pretrain.public import (
    check_disjoint,
    fingerprint,
    manifest_sha256,
    public_config,
)

log = logging.getLogger(__name__)


def describe_public(cfg: Config) -> str:
    """One line naming the public data, for datasheets, privacy.json and the report."""
    p = cfg.pretrain
    if p.source == "cohort":
        return f"public BraTS-layout cohort {p.cohort_dir}"
    ph = p.phantom
    return (
        f"public phantom cohort '{ph.id_prefix}' ({ph.subjects} subjects, {ph.sites} scanner "
        f"profiles, seed {ph.seed}, {ph.voxel_size:g} mm), disjoint from the sites' cohort"
    )


def check_public_cohort(cfg: Config) -> dict[str, Any]:
    """Resolve the public and the private cohort; refuse overlap (DataError); provenance."""
    pub = public_config(cfg)
    public_dir, private_dir = resolve_cohort(pub), resolve_cohort(cfg)
    public_fp, private_fp = fingerprint(public_dir), fingerprint(private_dir)
    check_disjoint(public_fp, private_fp)
    split = load_split(public_dir)
    return {
        "public_data": {
            "description": describe_public(cfg),
            "source": cfg.pretrain.source,
            "folder": str(public_dir),
            "manifest_sha256": manifest_sha256(public_dir),
            "training_subjects": sum(len(v) for v in split.sites.values()),
            "heldout_subjects": len(split.test),
            "phantom": dataclasses.asdict(cfg.pretrain.phantom)
            if cfg.pretrain.source == "phantom" else None,
        },
        "disjoint_from": {
            "folder": str(private_dir),
            "subjects": len(private_fp.subjects),
            "checked": "subject ids and voxel sha256 of every image",
        },
    }  # fmt: skip


def pretrain(
    cfg: Config, out: str | Path, *, overwrite: bool = False, progress: bool = True,
    device: str | None = None,
) -> Path:  # fmt: skip
    """Pre-train on ``cfg.pretrain``'s public cohort into ``out``; returns the init file."""
    provenance = check_public_cohort(cfg)  # before anything is trained or written
    pub = public_config(cfg)
    run = RunDir(out)
    run.create(pub, overwrite=overwrite)
    atomic_write_json(run.root / PUBLIC_DATA_FILE, provenance)
    data = load_central_data(pub)
    trainer = LocalTrainer(pub, data.train, planned_steps=pub.train.steps, site="public",
                           device=device)  # fmt: skip
    ema = WeightEMA(trainer.generator, cfg.pretrain.ema_decay)
    released = copy.deepcopy(trainer.generator).eval()
    eval_idx = eval_indices(data.test, pub.train.eval_slices, pub.seed)
    sample_idx = fixed_eval_slices(data.test, pub.train.sample_slices, pub.seed)
    start = time.perf_counter()
    while trainer.steps_done < pub.train.steps:
        n = min(pub.train.eval_every, pub.train.steps - trainer.steps_done)
        losses = _train_with_ema(trainer, ema, n, progress)
        released.load_state_dict(ema.state_dict())
        generate = _generate_with(released)
        q = evaluate_quality(generate, data.test, eval_idx)
        run.append_metrics({"step": trainer.steps_done, **losses, "ema_decay": ema.decay,
                            "seconds": time.perf_counter() - start, **q})  # fmt: skip
        log.info("pretrain step %d: public held-out SSIM %.3f, MAE %.3f", trainer.steps_done,
                 q["mean"].get("ssim", math.nan), q["mean"].get("mae", math.nan))  # fmt: skip
        save_sample_grid(generate, data.test, sample_idx, run.sample_png(trainer.steps_done),
                         title=f"public pre-training, step {trainer.steps_done} (EMA), no DP")  # fmt: skip
    plot_metrics(run.read_metrics(), run.plots)
    provenance.update(
        steps=trainer.steps_done, ema_decay=ema.decay, dp=False, seed=pub.seed,
        config_yaml=config_to_yaml(pub),
    )  # fmt: skip
    atomic_write_json(run.root / PUBLIC_DATA_FILE, provenance)
    return save_init(
        run.root / INIT_FILE, generator=ema.state_dict(),
        discriminator=trainer.discriminator.state_dict(), model=cfg.model,
        image_size=trainer.image_size, step=trainer.steps_done, provenance=provenance,
    )  # fmt: skip


def _train_with_ema(trainer: Any, ema: WeightEMA, n: int, progress: bool) -> dict[str, float]:
    """``n`` steps, the EMA updated after each; mean losses of the steps."""
    sums = {"loss_d": 0.0, "loss_g_adv": 0.0, "loss_g_l1": 0.0}
    counted = 0
    for _ in tqdm(range(n), desc="pretrain", disable=not progress, leave=False):
        r = trainer.train_steps(1)
        ema.update(trainer.generator)
        if math.isfinite(r.loss_d):
            counted += 1
            for k in sums:
                sums[k] += getattr(r, k)
    return {k: v / counted if counted else math.nan for k, v in sums.items()}


def _generate_with(module: Any) -> Any:
    @torch.no_grad()
    def generate(cond: torch.Tensor) -> torch.Tensor:
        device = next(module.parameters()).device
        return torch.cat([module(cond[i : i + 32].to(device)).cpu()
                          for i in range(0, len(cond), 32)])  # fmt: skip

    return generate
