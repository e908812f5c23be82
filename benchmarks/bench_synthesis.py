"""Synthesis benchmark: end-to-end throughput against the generator alone, and edit volumes.

1. Throughput at 64 and 128 px (default generator channels, untrained weights: speed does
   not depend on the weights), ``--threads`` torch threads. Paired, in one process, taking
   turns ``--reps`` times: (a) ``fedsynth synthesize`` end to end (atlas label bank, edits,
   slicing, inference, reassembly, NIfTI writing, datasheet, contact sheet) of ``--cases``
   cases, twice: "cold", with an empty ``data.cache_dir`` (every atlas bank case is built in
   the run, as in a first synthesis on a machine), and "warm", with the bank's cases already
   in the cache (any later synthesis with the same atlas settings); (b) the generator alone
   (``generate_slices``: condition channels and forward passes) on the same slices. Ratio =
   end-to-end slices/s / generator slices/s; target >= 0.5 at both sizes. Median over the
   pairs. The template (MNI152 maps, ~1 s) is loaded before timing in both.
2. ``--wait-policies``: generator-only slices/s in child processes with OMP_WAIT_POLICY
   ACTIVE (threads spin at barriers, like libgomp's default) and PASSIVE (fedsynth's
   default, see fedsynth/__init__.py), taking turns: the cause of "128 px is 15x slower
   than 64 px" on a shared machine.
3. ``--volumes``: on phantom anatomy (atlas bank), whole-tumour volume of the source label
   maps vs the edited ones drawn with the default ``synthesis`` edits (+ volumes.png).

    python benchmarks/bench_synthesis.py [--out runs/bench/synthesis] [--cases 8] [--reps 2]
        [--threads 2] [--sizes 64 128] [--wait-policies] [--volumes]

Writes results.json under --out.
"""

from __future__ import annotations

import fedsynth  # noqa: F401 -- first: sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

TARGET = 0.5


def _checkpoint(cfg, path: Path) -> Path:
    from fedsynth.common.io.checkpoints import save_checkpoint
    from fedsynth.common.models.registry import architecture_hash, build_generator

    return save_checkpoint(
        path,
        build_generator(cfg.model).state_dict(),
        architecture=cfg.model.generator,
        config_hash=architecture_hash(cfg.model),
        step=0,
        extra={"model": asdict(cfg.model), "image_size": cfg.preprocess.image_size},
    )


def _stacks(cfg, cases: int) -> list:
    """The slice stacks of the label cases a ``cases``-case synthesis generates from (the
    atlas cases built here land in ``cfg.data.cache_dir``)."""
    from fedsynth.synthesis.generate import slice_case
    from fedsynth.synthesis.label_bank import build_label_bank, synthetic_label_cases

    bank = build_label_bank(cfg)
    size = cfg.preprocess.image_size
    return [slice_case(c, size) for _, c in synthetic_label_cases(bank, cases, cfg.synthesis)]


def generator_only(module, stacks: list, batch_size: int) -> tuple[int, float]:
    """(slices, seconds) of the generator stage alone over ``stacks``."""
    from fedsynth.synthesis.generate import generate_slices

    t0 = time.perf_counter()
    n = sum(len(generate_slices(module, s, batch_size, "cpu")) for s in stacks)
    return n, time.perf_counter() - t0


def _end_to_end(cfg, ckpt: Path, out: Path) -> tuple[int, float]:
    from fedsynth.synthesis.generate import synthesize

    t0 = time.perf_counter()
    result = synthesize(cfg, ckpt, out, overwrite=True, progress=False)
    return result.slices, result.slices / (time.perf_counter() - t0)


def throughput(size: int, cases: int, threads: int, reps: int) -> dict:
    import torch

    from fedsynth.common.config import load_config
    from fedsynth.synthesis.generate import synthesize
    from fedsynth.synthesis.generator_io import load_generator

    torch.set_num_threads(threads)
    settings = [f"preprocess.image_size={size}", "synthesis.device=cpu", f"synthesis.cases={cases}"]
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = load_config(None, [*settings, f"data.cache_dir={tmp}/warm-cache"])
        ckpt = _checkpoint(warm, Path(tmp) / "g.safetensors")
        module = load_generator(ckpt, fallback=warm).module.eval()
        stacks = _stacks(warm, cases)  # fills the warm cache with the bank's cases
        synthesize(warm, ckpt, Path(tmp) / "warm", cases=1, progress=False)  # threads
        generator_only(module, stacks[:1], warm.synthesis.batch_size)
        for rep in range(reps):
            cold = load_config(None, [*settings, f"data.cache_dir={tmp}/cold-cache-{rep}"])
            slices, cold_speed = _end_to_end(cold, ckpt, Path(tmp) / "out")
            _, warm_speed = _end_to_end(warm, ckpt, Path(tmp) / "out")
            n, seconds = generator_only(module, stacks, warm.synthesis.batch_size)
            pairs.append({
                "end_to_end_slices_per_s": cold_speed,
                "end_to_end_warm_slices_per_s": warm_speed,
                "generator_slices_per_s": n / seconds,
            })  # fmt: skip
    ratios = [p["end_to_end_slices_per_s"] / p["generator_slices_per_s"] for p in pairs]
    warm_ratios = [p["end_to_end_warm_slices_per_s"] / p["generator_slices_per_s"] for p in pairs]
    return {
        "image_size": size,
        "threads": threads,
        "cases": cases,
        "slices": slices,
        "pairs": pairs,
        "generator_slices_per_s": statistics.median(p["generator_slices_per_s"] for p in pairs),
        "end_to_end_slices_per_s": statistics.median(p["end_to_end_slices_per_s"] for p in pairs),
        "end_to_end_warm_slices_per_s": statistics.median(
            p["end_to_end_warm_slices_per_s"] for p in pairs
        ),
        "ratio": statistics.median(ratios),  # cold: the atlas bank built in the run
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_warm": statistics.median(warm_ratios),
        "ratio_warm_min": min(warm_ratios),
        "ratio_warm_max": max(warm_ratios),
        "target": TARGET,
    }


_CHILD = """
import os, sys, time, torch
from fedsynth.common.config import load_config
from fedsynth.common.models.registry import build_generator
torch.set_num_threads(int(sys.argv[1])); size = int(sys.argv[2]); n = int(sys.argv[3])
g = build_generator(load_config(None, [f"preprocess.image_size={size}"]).model).eval()
x = torch.randn(16, 7, size, size)
with torch.inference_mode():
    g(x)
    t = time.perf_counter()
    for _ in range(n // 16): g(x)
print(n / (time.perf_counter() - t))
"""


def wait_policies(sizes: list[int], threads: int, reps: int) -> list[dict]:
    """Generator slices/s (batch 16) with OMP_WAIT_POLICY ACTIVE vs PASSIVE, taking turns."""
    rows = []
    for size in sizes:
        speed: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
        for _ in range(reps):
            for policy in speed:
                env = {**os.environ, "OMP_WAIT_POLICY": policy}
                n = str(256 if size <= 64 else 64)
                cmd = [sys.executable, "-c", _CHILD, str(threads), str(size), n]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                speed[policy].append(float(done.stdout.split()[-1]))
        rows.append({
            "image_size": size, "threads": threads, "batch": 16, "slices_per_s": speed,
            "passive_over_active": statistics.median(
                p / a for p, a in zip(speed["PASSIVE"], speed["ACTIVE"], strict=True)
            ),
        })  # fmt: skip
    return rows


def edited_volumes(n_edited: int, anatomies: int) -> dict[str, list[float]]:
    from fedsynth.common.config import SynthesisConfig
    from fedsynth.synthesis.label_bank import atlas_bank, synthetic_label_cases

    cfg = SynthesisConfig(atlas_anatomies=anatomies)
    bank = atlas_bank(anatomies, cfg.atlas_voxel_size, cfg.seed, cfg.atlas_healthy_fraction)
    source = [bank.load(i).tumour_volume_ml() for i in range(len(bank)) if bank.tumour[i]]
    edited, kinds = [], []
    t = time.perf_counter()
    for _, case in synthetic_label_cases(bank, n_edited, cfg):
        edited.append(case.tumour_volume_ml())
        kinds.append("+".join(e["edit"] for e in case.edits) or "none")
    return {
        "source_ml": source,
        "edited_ml": edited,
        "edit_combinations": kinds,
        "seconds_per_edited_case": (time.perf_counter() - t) / n_edited,
    }


def plot(vols: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsynth.common.io.atomic import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    hi = max(vols["source_ml"] + vols["edited_ml"]) * 1.05
    bins = np.linspace(0, hi, 20)
    axes[0].hist(vols["source_ml"], bins=bins, alpha=0.6, density=True, label="source (atlas bank)")
    axes[0].hist(vols["edited_ml"], bins=bins, alpha=0.6, density=True, label="edited")
    axes[0].set_xlabel("whole-tumour volume (ml)")
    axes[0].set_ylabel("density")
    axes[0].legend()
    axes[1].boxplot([vols["source_ml"], vols["edited_ml"]])
    axes[1].set_xticks([1, 2], ["source", "edited"])
    axes[1].set_ylabel("whole-tumour volume (ml)")
    fig.suptitle("Tumour volume before and after the default synthesis edits (phantom anatomy)")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/synthesis")
    parser.add_argument("--cases", type=int, default=8, help="cases per end-to-end run")
    parser.add_argument("--reps", type=int, default=2, help="pairs (end to end, generator)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wait-policies", action="store_true", help="ACTIVE vs PASSIVE")
    parser.add_argument("--volumes", action="store_true", help="edit volume statistics")
    parser.add_argument("--edited", type=int, default=60, help="edited label cases drawn")
    parser.add_argument("--anatomies", type=int, default=16, help="atlas bank size")
    args = parser.parse_args(argv)
    from fedsynth.common.io.atomic import atomic_write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"throughput": []}
    for size in args.sizes:
        r = throughput(size, args.cases, args.threads, args.reps)
        results["throughput"].append(r)
        print(
            f"{size:>4} px, {r['threads']} threads, {r['cases']} cases ({r['slices']} slices): "
            f"generator alone {r['generator_slices_per_s']:.1f} slices/s; end to end, atlas "
            f"bank built in the run (cold) {r['end_to_end_slices_per_s']:.1f} slices/s: ratio "
            f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}); bank cached by an "
            f"earlier run (warm) {r['end_to_end_warm_slices_per_s']:.1f} slices/s: ratio "
            f"{r['ratio_warm']:.2f} ({r['ratio_warm_min']:.2f}-{r['ratio_warm_max']:.2f}); "
            f"target >= {TARGET}",
            flush=True,
        )
    if args.wait_policies:
        results["wait_policies"] = wait_policies(args.sizes, args.threads, args.reps)
        for w in results["wait_policies"]:
            print(
                f"{w['image_size']:>4} px generator, OMP_WAIT_POLICY PASSIVE / ACTIVE: "
                f"{w['passive_over_active']:.1f}x ({w['slices_per_s']})"
            )
    if args.volumes:
        results["volumes"] = volume_summary(args, out)
    atomic_write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'}")
    return 0


def volume_summary(args: argparse.Namespace, out: Path) -> dict:
    vols = edited_volumes(args.edited, args.anatomies)
    src, ed = np.array(vols["source_ml"]), np.array(vols["edited_ml"])
    summary = {
        name: {
            "n": int(a.size),
            "median_ml": round(float(np.median(a)), 2),
            "p10_ml": round(float(np.percentile(a, 10)), 2),
            "p90_ml": round(float(np.percentile(a, 90)), 2),
            "healthy": int((a == 0).sum()),
        }
        for name, a in (("source", src), ("edited", ed))
    }
    for name, s in summary.items():
        print(
            f"{name:>7}: n={s['n']} median {s['median_ml']} ml, "
            f"p10-p90 {s['p10_ml']}-{s['p90_ml']} ml, healthy {s['healthy']}"
        )
    print(f"edit time per label case: {vols['seconds_per_edited_case']:.3f} s")
    plot(vols, out / "volumes.png")
    return {**vols, "summary": summary}


if __name__ == "__main__":
    raise SystemExit(main())
