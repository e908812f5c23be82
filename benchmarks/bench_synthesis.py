"""Synthesis benchmark: throughput, and what the edits do to tumour volumes.

1. Throughput of `fedsynth synthesize` on 2 CPU threads at 64 and 128 px (default generator
   channels, untrained weights: speed does not depend on the weights): generator slices per
   second (inference only) and synthetic cases per minute end to end (label bank, edits,
   slicing, inference, reassembly, NIfTI writing).
2. On phantom anatomy (atlas bank: MNI152 + procedural tumours), whole-tumour volume of the
   source label maps vs the edited ones drawn with the default `synthesis` edits.

    python benchmarks/bench_synthesis.py [--out runs/bench/synthesis] [--cases 4] [--edited 60]

Writes results.json and volumes.png under --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def throughput(size: int, cases: int, threads: int) -> dict[str, float]:
    import torch

    from fedsynth.common.config import load_config
    from fedsynth.common.io.checkpoints import save_checkpoint
    from fedsynth.common.models.registry import architecture_hash, build_generator
    from fedsynth.synthesis import generate as gen_mod
    from fedsynth.synthesis.generate import synthesize

    torch.set_num_threads(threads)
    cfg = load_config(
        None, [f"preprocess.image_size={size}", "synthesis.device=cpu", f"synthesis.cases={cases}"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(
            Path(tmp) / "g.safetensors",
            build_generator(cfg.model).state_dict(),
            architecture=cfg.model.generator,
            config_hash=architecture_hash(cfg.model),
            step=0,
            extra={"model": asdict(cfg.model), "image_size": size},
        )
        synthesize(cfg, ckpt, Path(tmp) / "warm", cases=1, progress=False)  # template, threads
        inference = {"seconds": 0.0, "slices": 0}
        original = gen_mod.generate_slices

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = original(*args, **kwargs)
            inference["seconds"] += time.perf_counter() - t
            inference["slices"] += len(out)
            return out

        gen_mod.generate_slices = timed
        try:
            t0 = time.perf_counter()
            result = synthesize(cfg, ckpt, Path(tmp) / "out", progress=False)
            total = time.perf_counter() - t0
        finally:
            gen_mod.generate_slices = original
    return {
        "image_size": size,
        "threads": threads,
        "cases": cases,
        "slices": result.slices,
        "inference_slices_per_s": round(inference["slices"] / inference["seconds"], 1),
        "end_to_end_slices_per_s": round(result.slices / total, 1),
        "cases_per_min": round(60 * cases / total, 2),
        "seconds": round(total, 2),
    }


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/synthesis")
    parser.add_argument("--cases", type=int, default=4, help="cases per throughput run")
    parser.add_argument("--edited", type=int, default=60, help="edited label cases drawn")
    parser.add_argument("--anatomies", type=int, default=16, help="atlas bank size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results = {"throughput": [throughput(s, args.cases, args.threads) for s in (64, 128)]}
    for r in results["throughput"]:
        print(
            f"{r['image_size']:>4} px, {r['threads']} threads: {r['inference_slices_per_s']} slices/s "
            f"(generator), {r['end_to_end_slices_per_s']} slices/s and {r['cases_per_min']} "
            f"cases/min end to end ({r['slices']} slices, {r['cases']} cases)"
        )
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
    results["volumes"] = {**vols, "summary": summary}
    for name, s in summary.items():
        print(
            f"{name:>7}: n={s['n']} median {s['median_ml']} ml, p10-p90 {s['p10_ml']}-{s['p90_ml']} ml, healthy {s['healthy']}"
        )
    print(f"edit time per label case: {vols['seconds_per_edited_case']:.3f} s")
    plot(vols, out / "volumes.png")
    from fedsynth.common.io.atomic import atomic_write_json

    atomic_write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'} and {out / 'volumes.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
