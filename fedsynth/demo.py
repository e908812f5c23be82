"""The main job (``make demo`` / ``fedsynth demo``): every stage of fedsynth, end to end.

Stages (``STAGES``), each resumable: a finished stage leaves ``<out>/stages/<name>.json`` and
is not recomputed when the demo is run again on the same ``--out`` (layout:
``fedsynth.common.rundir.DemoDir``):

1. ``cohort``     build (or reuse) the phantom cohort, validate every case, draw a preview
2. ``pretrain``   (pretrain.enabled) pre-train G and D on the PUBLIC cohort, no DP
3. ``federated``  train pix2pix across the sites with Flower, DP on both GAN steps, starting
                  from the public pre-training when there is one
4. ``synthesis``  synthetic BraTS cohort from the federated generator, with a datasheet
5. ``benchmark``  segmentation arms against locally trained baselines
6. ``audit``      membership inference and memorisation audit of the released generator
7. ``report``     one self-contained HTML page of the federated run
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedsynth.audit.writer import run_audit
from fedsynth.benchmark.runner import run_benchmark
from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.data.preview import preview_cohort
from fedsynth.common.data.validate import validate_cohort
from fedsynth.common.errors import DataError, IncompleteRunError
from fedsynth.common.io.atomic import atomic_write_json, atomic_write_text
from fedsynth.common.rundir import INIT_FILE, DemoDir
from fedsynth.pretrain.run import describe_public, pretrain
from fedsynth.report.html import write_report
from fedsynth.simulation import simulate
from fedsynth.synthesis.generate import synthesize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable[[Config, Path], dict[str, Any]]  # returns a JSON-able summary


def _cohort(cfg: Config, out: Path) -> dict[str, Any]:
    cohort = resolve_cohort(cfg)
    report = validate_cohort(cohort)
    if not report.ok:
        raise DataError(cohort, "the demo cohort failed validation:\n" + report.summary())
    split = load_split(cohort)
    preview = preview_cohort(cohort, DemoDir(out).preview)
    return {
        "cohort": str(cohort),
        "cases": len(report.cases),
        "test_patients": len(split.test),
        "sites": {site: len(ids) for site, ids in split.sites.items()},
        "preview": str(preview),
    }


def _pretrain(cfg: Config, out: Path) -> dict[str, Any]:
    if not cfg.pretrain.enabled:
        return {"skipped": "pretrain.enabled is false: the federation starts from scratch"}
    run = DemoDir(out).pretrain
    init = pretrain(cfg, run.root, overwrite=True)
    last = run.read_metrics()[-1]
    return {
        "init": str(init),
        "public_data": describe_public(cfg),
        "steps": last["step"],
        "public_heldout_ssim": last["mean"].get("ssim"),
    }


def with_pretrained_init(cfg: Config, out: Path) -> Config:
    """``cfg`` starting from the demo's public pre-training, when it made one."""
    init = DemoDir(out).pretrain.root / INIT_FILE
    if not cfg.pretrain.enabled or cfg.model.init:
        return cfg
    if not init.is_file():
        raise DataError(init, "pretrain.enabled, but the pre-training stage left no init file")
    return replace(cfg, model=replace(cfg.model, init=str(init)))


def _federated(cfg: Config, out: Path) -> dict[str, Any]:
    cfg = with_pretrained_init(cfg, out)
    run = DemoDir(out).federated
    run_dir = run.root
    done = simulate(cfg, run_dir)  # resumes from the last completed round if interrupted
    if done < cfg.federation.rounds:
        raise IncompleteRunError(
            run_dir,
            f"federated training stopped after round {done} of {cfg.federation.rounds}; "
            "see its log, then run the demo again to resume",
        )
    privacy = json.loads(run.privacy.read_text())
    return {
        "run_dir": str(run_dir),
        "rounds": done,
        "checkpoint": str(run.generator),
        "privacy": privacy["statement"],
        "worst_epsilon": privacy["worst_epsilon"],
        "delta": privacy["delta"],
    }


def _synthesis(cfg: Config, out: Path) -> dict[str, Any]:
    demo = DemoDir(out)
    result = synthesize(cfg, demo.federated.generator, demo.synthetic, overwrite=True)
    return {
        "cohort": str(result.out),
        "cases": result.cases,
        "slices": result.slices,
        "seconds": round(result.seconds, 1),
        "contact_sheet": str(result.out / "contact_sheet.png"),
    }


def _benchmark(cfg: Config, out: Path) -> dict[str, Any]:
    demo = DemoDir(out)
    result = run_benchmark(cfg, demo.federated.root, synthetic=demo.synthetic)
    return {"results": str(result.out / "results.md"), "table": str(result.out / "results.csv")}


def _audit(cfg: Config, out: Path) -> dict[str, Any]:
    demo = DemoDir(out)
    result = run_audit(demo.federated.root, synthetic_dir=demo.synthetic, overwrite=True)
    membership = result.report["membership"]["overall"]
    return {"audit_dir": str(result.out), "membership_auc": membership["auc"]}


def _report(cfg: Config, out: Path) -> dict[str, Any]:
    return {"report": str(write_report(DemoDir(out).federated.root))}


STAGES: tuple[Stage, ...] = (
    Stage("cohort", "phantom cohort: build, validate, preview", _cohort),
    Stage("pretrain", "public pre-training of the generator (no DP, public data)", _pretrain),
    Stage("federated", "federated pix2pix training with DP (Flower simulation)", _federated),
    Stage("synthesis", "synthetic cohort from the federated generator", _synthesis),
    Stage("benchmark", "segmentation benchmark against locally trained baselines", _benchmark),
    Stage("audit", "privacy audit of the released generator", _audit),
    Stage("report", "HTML report", _report),
)


def run_demo(cfg: Config, out: Path) -> dict[str, dict[str, Any]]:
    """Run every stage not yet finished in ``out``; returns each stage's summary."""
    demo = DemoDir(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(demo.config, config_to_yaml(cfg))
    summaries: dict[str, dict[str, Any]] = {}
    for i, stage in enumerate(STAGES, 1):
        marker = demo.stage_marker(stage.name)
        header = f"[{i}/{len(STAGES)}] {stage.title}"
        if marker.is_file():
            summaries[stage.name] = json.loads(marker.read_text())
            print(f"{header}: done earlier (remove {marker} to redo it)", flush=True)
            continue
        print(f"{header} ...", flush=True)
        start = time.perf_counter()
        summary = stage.run(cfg, out)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json(marker, summary)
        summaries[stage.name] = summary
        print(f"{header}: done in {summary['seconds']:.0f} s", flush=True)
    return summaries
