"""Phantom cohort benchmark: generation time, and whether segmentation is a fair test.

1. Time to generate a cohort (default 40 subjects at 2 mm, the demo's settings).
2. A voxel classifier (gradient boosting on per-subject z-scored intensities, raw and
   smoothed) trained on phantom subjects and scored by Dice on held-out subjects:
   - per input contrast set (each single contrast vs all four): the regions should need
     several contrasts (enhancing only on T1c; oedema vs CSF needs FLAIR besides T2);
   - per number of training subjects: more subjects should help.

    python benchmarks/bench_phantom.py [--out runs/bench/phantom] [--subjects 40]

Writes results.json under --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REGIONS = {"whole": (1, 2, 3), "core": (1, 3), "enhancing": (3,)}  # internal labels


def _features(images: dict[str, np.ndarray], brain: np.ndarray, contrasts: list[str]) -> np.ndarray:
    """(N brain voxels, 2 * len(contrasts)) z-scored intensity and its 1.5-voxel smoothing."""
    from scipy import ndimage

    cols = []
    for m in contrasts:
        img = images[m].astype(np.float32)
        z = (img - img[brain].mean()) / max(float(img[brain].std()), 1e-6)
        cols += [z[brain], ndimage.gaussian_filter(z, 1.5)[brain]]
    return np.stack(cols, axis=1)


def _dice(pred: np.ndarray, truth: np.ndarray, labels: tuple[int, ...]) -> float:
    p, t = np.isin(pred, labels), np.isin(truth, labels)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)


def _segmentation_scores(cases, train_ids, test_ids, contrasts, rng) -> dict[str, float]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    xs, ys = [], []
    for cid in train_ids:
        case = cases[cid]
        brain = case.images["flair"] > 0
        x, y = _features(case.images, brain, contrasts), case.seg[brain]
        keep = rng.random(len(y)) < np.where(y > 0, 1.0, 0.15)  # keep tumour, thin background
        xs.append(x[keep])
        ys.append(y[keep])
    clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(
        np.concatenate(xs), np.concatenate(ys)
    )
    scores: dict[str, list[float]] = {r: [] for r in REGIONS}
    for cid in test_ids:
        case = cases[cid]
        if not case.seg.any():
            continue
        brain = case.images["flair"] > 0
        pred = np.zeros_like(case.seg)
        pred[brain] = clf.predict(_features(case.images, brain, contrasts))
        for region, labels in REGIONS.items():
            if np.isin(case.seg, labels).any():
                scores[region].append(_dice(pred, case.seg, labels))
    return {r: float(np.mean(v)) if v else float("nan") for r, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/phantom")
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--voxel-size", type=float, default=2.0)
    parser.add_argument("--seg-voxel-size", type=float, default=4.0, help="cohort for part 2")
    args = parser.parse_args(argv)

    from fedsynth.common.config import PhantomConfig
    from fedsynth.common.data.brats import discover_cases
    from fedsynth.common.data.phantom import generate_phantom_cohort
    from fedsynth.common.data.phantom_anatomy import load_template
    from fedsynth.common.data.validate import load_case

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {}

    t0 = time.perf_counter()
    load_template(args.voxel_size)
    t1, c1 = time.perf_counter(), time.process_time()
    cfg = PhantomConfig(subjects=args.subjects, voxel_size=args.voxel_size)
    generate_phantom_cohort(out / "cohort-gen", cfg, overwrite=True)
    t2, c2 = time.perf_counter(), time.process_time()
    results["generation"] = {
        "subjects": args.subjects,
        "voxel_size_mm": args.voxel_size,
        "template_load_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 2),
        "generate_cpu_s": round(c2 - c1, 2),  # robust to other load on the machine
        "per_subject_s": round((t2 - t1) / args.subjects, 3),
    }
    print(f"generation: {results['generation']}")

    seg_cfg = PhantomConfig(subjects=40, voxel_size=args.seg_voxel_size, seed=1)
    seg_dir = generate_phantom_cohort(out / "cohort-seg", seg_cfg, overwrite=True)
    cases = {c.case_id: load_case(c) for c in discover_cases(seg_dir)}
    ids = sorted(cases)
    test_ids, pool = ids[:12], ids[12:]
    rng = np.random.default_rng(0)
    ablation = {}
    for contrasts in (
        ["t1"],
        ["t1c"],
        ["t2"],
        ["flair"],
        ["t2", "flair"],
        ["t1", "t1c", "t2", "flair"],
    ):
        key = "+".join(contrasts)
        ablation[key] = _segmentation_scores(cases, pool, test_ids, contrasts, rng)
        print(f"contrasts {key:<18} " + "  ".join(f"{r} {v:.3f}" for r, v in ablation[key].items()))
    curve = {}
    for n in (2, 6, 28):
        scores = _segmentation_scores(cases, pool[:n], test_ids, ["t1", "t1c", "t2", "flair"], rng)
        curve[n] = scores
        print(f"train subjects {n:<3} " + "  ".join(f"{r} {v:.3f}" for r, v in scores.items()))
    results["dice_by_contrasts"] = ablation
    results["dice_by_training_subjects"] = curve
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
