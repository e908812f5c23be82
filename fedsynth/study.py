"""``fedsynth study``: public-only vs federated DP fine-tuning vs DP from scratch, same patients.

Arms (``study.arms``; see config.check_study_arm):
- ``public-only``: the pre-trained generator, no site data at all -- the honest baseline;
- ``finetune:<trainable>:<eps>``: federated training from the public pre-training
  (``model.init``), only ``<trainable>`` parameters trained, at epsilon ``<eps>`` per patient
  (``inf``: no DP);
- ``scratch:<trainable>:<eps>``: federated training from a random start (the old method).

Layout::

    OUT/config.yaml            the study config
    OUT/pretrain/              fedsynth pretrain (public data only), shared by every arm
    OUT/arms/<arm>/            one federated run per trained arm (resumable), and per arm
                               quality.json, samples.png, synthetic/, benchmark/, audit/
    OUT/real/benchmark/        the real-data segmentation arms (local, pooled), run once
    OUT/study.json, study.md   one row per arm: epsilon, delta, trainable parameters,
                               held-out MAE/PSNR/SSIM per contrast, Dice, membership AUC
    OUT/samples.png            the same held-out label maps rendered by every arm

Every arm is scored on the same held-out test patients (split.test: never trained on by
anyone, never used to choose a setting). Resumable: an arm whose quality.json exists is
not recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from fedsynth.audit.writer import run_audit
from fedsynth.central import load_central_data
from fedsynth.common.config import Config, check_study_arm, config_to_yaml
from fedsynth.common.data.datasets import fixed_eval_slices
from fedsynth.common.errors import FedsynthError
from fedsynth.common.gan.evaluation import (
    eval_indices,
    evaluate_quality,
    label_map_rgb,
    save_sample_grid,
    slice_batch,
)
from fedsynth.common.io.atomic import atomic_write_json, atomic_write_text, save_figure
from fedsynth.common.rundir import CONFIG_FILE, INIT_FILE, RunDir
from fedsynth.pretrain.run import pretrain
from fedsynth.simulation import simulate
from fedsynth.study_segmentation import (
    dice_summary,
    dice_table,
    read_rows,
    real_benchmark,
    synthetic_benchmark,
)
from fedsynth.synthesis.generate import synthesize
from fedsynth.synthesis.generator_io import load_generator

log = logging.getLogger(__name__)
QUALITY_FILE = "quality.json"


def arm_folder(arm: str) -> str:
    return arm.replace(":", "-")


def arm_config(cfg: Config, arm: str, init: Path) -> Config:
    """The federated config of a trained arm (its privacy, trainable set and start)."""
    kind, trainable, eps = check_study_arm(arm)
    privacy = dataclasses.replace(
        cfg.privacy, enabled=math.isfinite(eps), trainable=trainable,
        target_epsilon=eps if math.isfinite(eps) else cfg.privacy.target_epsilon,
    )  # fmt: skip
    model = dataclasses.replace(cfg.model, init=str(init) if kind == "finetune" else None)
    return dataclasses.replace(cfg, name=f"{cfg.name}-{arm_folder(arm)}", privacy=privacy,
                               model=model)  # fmt: skip


def _pretrained(cfg: Config, out: Path) -> Path:
    init = out / "pretrain" / INIT_FILE
    if init.is_file():
        return init
    print("[pretrain] public cohort, no DP ...", flush=True)
    return pretrain(cfg, out / "pretrain", overwrite=True)


def _train_arm(cfg: Config, arm: str, init: Path, folder: Path) -> tuple[Path, Config]:
    """The arm's released generator checkpoint and config (public-only: the init file)."""
    if arm == "public-only":
        return init, cfg
    acfg = arm_config(cfg, arm, init)
    rounds = simulate(acfg, folder)
    if rounds < acfg.federation.rounds:
        raise FedsynthError(f"{folder}: federated training stopped after round {rounds}")
    return RunDir(folder).generator, acfg


def _generate_fn(checkpoint: Path, cfg: Config) -> Any:
    g = load_generator(checkpoint, fallback=cfg).module

    @torch.no_grad()
    def generate(cond: torch.Tensor) -> torch.Tensor:
        return torch.cat([g(cond[i : i + 32]) for i in range(0, len(cond), 32)])

    return generate


def _quality(cfg: Config, checkpoint: Path, folder: Path, test: Any) -> dict[str, Any]:
    generate = _generate_fn(checkpoint, cfg)

    idx = eval_indices(test, cfg.train.eval_slices, cfg.seed)
    q = evaluate_quality(generate, test, idx)
    save_sample_grid(generate, test, fixed_eval_slices(test, cfg.train.sample_slices, cfg.seed),
                     folder / "samples.png", title=folder.name)  # fmt: skip
    return q


def run_arm(cfg: Config, arm: str, init: Path, out: Path, test: Any) -> dict[str, Any]:
    folder = out / "arms" / arm_folder(arm)
    marker = folder / QUALITY_FILE
    if marker.is_file():
        return json.loads(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, acfg = _train_arm(cfg, arm, init, folder)
    row: dict[str, Any] = {"arm": arm, "checkpoint": str(checkpoint)}
    row.update(_privacy_of(arm, folder, acfg))
    row.update(_quality(cfg, checkpoint, folder, test))
    if cfg.study.segmentation and arm in _segmentation_arms(cfg):
        row["segmentation"] = str(_segmentation(acfg, checkpoint, folder))
    if cfg.study.audit and arm != "public-only":  # public-only saw no site patient
        row["membership_auc"] = _audit(folder)
    atomic_write_json(marker, row)
    return row


def _privacy_of(arm: str, folder: Path, acfg: Config) -> dict[str, Any]:
    kind, trainable, eps = check_study_arm(arm)
    if arm == "public-only":
        return {"epsilon": 0.0, "delta": 0.0, "trainable": "none", "dp": False,
                "statement": "no site data used: epsilon 0 for every site patient"}  # fmt: skip
    privacy = json.loads(RunDir(folder).privacy.read_text())
    return {"epsilon": privacy.get("worst_epsilon"), "delta": privacy.get("delta"),
            "trainable": trainable, "dp": privacy.get("dp_enabled"),
            "statement": privacy.get("statement")}  # fmt: skip


def _segmentation_arms(cfg: Config) -> list[str]:
    chosen = cfg.study.segmentation_arms
    return list(cfg.study.arms) if chosen is None else list(chosen)


def _segmentation(acfg: Config, checkpoint: Path, folder: Path) -> Path:
    """Synthesise the arm's cohort and run the synthetic benchmark arms; per_patient.csv."""
    synthetic = folder / "synthetic"
    synthesize(acfg, checkpoint, synthetic, cases=acfg.benchmark.synthetic_cases, overwrite=True)
    return synthetic_benchmark(acfg, synthetic, folder)


def _audit(folder: Path) -> float | None:
    synthetic = folder / "synthetic"
    audit = run_audit(folder, synthetic_dir=synthetic if synthetic.is_dir() else None,
                      overwrite=True)  # fmt: skip
    return audit.report["membership"]["overall"]["auc"]


def run_study(cfg: Config, out: Path, arms: list[str] | None = None) -> Path:
    """Pre-train once, then every arm; writes study.json and study.md; returns study.md."""
    arms = list(arms or cfg.study.arms)
    for arm in arms:
        check_study_arm(arm)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, config_to_yaml(cfg))
    init = _pretrained(cfg, out)
    test = load_central_data(cfg).test
    real = real_benchmark(cfg, out) if cfg.study.segmentation else None
    rows = []
    for i, arm in enumerate(arms, 1):
        print(f"[{i}/{len(arms)}] {arm} ...", flush=True)
        rows.append(run_arm(cfg, arm, init, out, test))
    study: dict[str, Any] = {"arms": rows, "test_patients": len(test.patients)}
    md = study_table(rows, len(test.patients))
    if real is not None:
        seg_rows = read_rows(real)
        for r in rows:
            if r.get("segmentation"):
                seg_rows += read_rows(Path(r["segmentation"]), prefix=r["arm"])
        summary = dice_summary(seg_rows, [r["arm"] for r in rows])
        study["segmentation"] = summary
        md += "\n" + dice_table(summary, {r["arm"]: epsilon_label(r) for r in rows})
    atomic_write_json(out / "study.json", study)
    compare_grid(cfg, rows, test, out / "samples.png")
    atomic_write_text(out / "study.md", md)
    return out / "study.md"


def epsilon_label(r: dict[str, Any]) -> str:
    """How an arm's row states its privacy: no site data, no DP, or epsilon (delta)."""
    if r["arm"] == "public-only":
        return "0 (no site data)"
    if not r.get("dp"):
        return "inf (no DP)"
    return f"{r['epsilon']:.2f} ({r['delta']:g})"


def study_table(rows: list[dict[str, Any]], test_patients: int) -> str:
    """Markdown: one row per arm, held-out SSIM / MAE / PSNR per contrast and their mean."""
    contrasts = ("t1", "t1c", "t2", "flair")
    head = ["arm", "epsilon (delta)", *(f"SSIM {c}" for c in contrasts), "SSIM", "MAE", "PSNR",
            "membership AUC"]  # fmt: skip
    lines = [f"Held-out image quality on {test_patients} test patients (brain pixels).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in rows:
        eps_s = epsilon_label(r)
        q, m = r["quality"], r["mean"]
        cells = [r["arm"], eps_s, *(f"{q[c]['ssim']:.3f}" for c in contrasts),
                 f"{m['ssim']:.3f}", f"{m['mae']:.3f}", f"{m['psnr']:.2f}",
                 _auc(r.get("membership_auc"))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _auc(value: float | None) -> str:
    """Membership-inference AUC (0.5: the attacker cannot tell members from held-out)."""
    return "n/a" if value is None else f"{value:.3f}"


def compare_grid(cfg: Config, rows: list[dict[str, Any]], test: Any, path: Path) -> Path:
    """PNG: for two fixed held-out label maps, the real contrasts, then each arm's fakes.

    One row per arm (the first: the label map and the real images), columns t1, t1c, t2,
    flair for each of the two slices. Same slices for every arm.
    """
    idx = fixed_eval_slices(test, 2, cfg.seed)
    cond, real = slice_batch(test, idx)

    def upright(img: np.ndarray) -> np.ndarray:  # RAS (x, y) arrays: anterior at the top
        return img.transpose(1, 0, *range(2, img.ndim))[::-1]

    def grey(x: Any) -> np.ndarray:
        g = (np.asarray(x).clip(-1, 1) + 1) / 2
        return np.repeat(g[..., None], 3, axis=2)

    def strip(images: Any, first: np.ndarray) -> np.ndarray:
        panels = [first]
        for s in range(len(idx)):
            panels += [grey(images[s, c]) for c in range(images.shape[1])]
        return np.concatenate([upright(p) for p in panels], axis=1)

    blank = np.ones((*cond.shape[-2:], 3))
    lines = [strip(real.numpy(), label_map_rgb(cond[0].numpy()))]
    names = ["real (label map, slice 1 | slice 2)"]
    for r in rows:
        lines.append(strip(_generate_fn(Path(r["checkpoint"]), cfg)(cond).numpy(), blank))
        eps = "no site data" if r["arm"] == "public-only" else (
            "no DP" if not r.get("dp") else f"eps {r['epsilon']:.2g}")  # fmt: skip
        names.append(f"{r['arm']} ({eps})")
    mosaic = np.concatenate(lines, axis=0)
    size = cond.shape[-1]
    fig = Figure(figsize=(mosaic.shape[1] / 50, mosaic.shape[0] / 50 + 0.6))
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([size * (i + 0.5) for i in range(len(names))], names, fontsize=7)
    contrasts = ["t1", "t1c", "t2", "flair"]
    ax.set_xticks([size * (i + 1.5) for i in range(2 * len(contrasts))], contrasts * 2, fontsize=7)
    ax.set_title("held-out label maps rendered by each generator arm", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path
