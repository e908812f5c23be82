"""Agreement of fedsynth's computed tissue maps with ANTs Atropos and with the phantoms' truth.

fedsynth computes CSF / GM / WM maps itself (``fedsynth.common.data.tissue``). This script
measures them against an independent standard tool, ANTs Atropos (``antspyx``; run here only,
it is not a fedsynth dependency: ``pip install --target DIR antspyx`` and pass ``--ants DIR``),
and against ground truth where there is one:

1. the real BraTS case (the full shared case if this machine has it, and the 3x-downsampled
   test fixture): Dice per class of fedsynth vs Atropos (3-class k-means start, MRF [0.1,
   1x1x1], on T1 and on T1+T2+FLAIR), on the healthy brain (brain minus the tumour grown by
   3 voxels); plus the class shares. No ground truth exists for a real case.
2. phantoms (``--phantoms`` subjects, 2 mm), whose true tissue maps are known (MNI152 tissue
   deformed per subject): Dice per class vs the truth for fedsynth and for Atropos, on the
   healthy brain.

The previous fedsynth method (a 3-class full-covariance mixture on T1, T2 and FLAIR, no
spatial prior) is run alongside as the baseline of the change.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tissue.py --ants /tmp/antslib \\
        [--phantoms 3] [--out runs/bench/tissue]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from fedsynth.common.config import PhantomConfig
from fedsynth.common.data import brats
from fedsynth.common.data.loaded import LoadedCase
from fedsynth.common.data.phantom import generate_phantom_cohort
from fedsynth.common.data.preprocess import bounding_box, brain_mask, normalise_intensity
from fedsynth.common.data.tissue import compute_tissue
from fedsynth.common.data.validate import load_case
from fedsynth.common.io.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED_CASE = Path("/work/shared/data/brats/BraTS-GLI-00000-000")
FIXTURE_CASE = ROOT / "tests/fixtures/brats2023/BraTS-GLI-00000-000"
CLASSES = {1: "CSF", 2: "GM", 3: "WM"}
MRF_VARIANT = 0.1  # fedsynth with its optional spatial prior on, as Atropos's -m [0.1, 1x1x1]


def previous_method(norm: dict, brain: np.ndarray, tumour: np.ndarray, seed: int = 0):
    """fedsynth's tissue map before this change: full-covariance GMM on T1, T2, FLAIR."""
    from sklearn.mixture import GaussianMixture

    feats = ("t1", "t2", "flair")
    x = np.stack([norm[m][brain] for m in feats], axis=1).astype(np.float64)
    fit = x[(~tumour)[brain]]
    rng = np.random.default_rng(seed)
    fit = fit[rng.choice(len(fit), min(20_000, len(fit)), replace=False)]
    gmm = GaussianMixture(3, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(fit)
    rank = np.argsort(np.argsort(gmm.means_[:, 0] - gmm.means_[:, 1]))
    out = np.zeros(brain.shape, np.uint8)
    out[brain] = rank[gmm.predict(x)] + 1
    return out


def atropos(ants, images: list[np.ndarray], mask: np.ndarray, spacing) -> np.ndarray:
    """ANTs Atropos, 3 classes, k-means start, MRF [0.1, 1x1x1]; labels by first channel."""

    def img(a):
        return ants.from_numpy(np.ascontiguousarray(a, dtype=np.float32), spacing=tuple(spacing))

    a = [img(v) for v in images]
    result = ants.atropos(
        a=a if len(a) > 1 else a[0], x=img(mask.astype(np.float32)), i="kmeans[3]",
        m="[0.1,1x1x1]", c="[5,0]",
    )  # fmt: skip
    return result["segmentation"].numpy().astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> dict[str, float]:
    out = {}
    for k, name in CLASSES.items():
        x, y = (a == k) & region, (b == k) & region
        denom = x.sum() + y.sum()
        out[name] = round(float(2 * (x & y).sum() / denom), 3) if denom else float("nan")
    return out


def shares(a: np.ndarray, region: np.ndarray) -> dict[str, float]:
    v = a[region]
    return {name: round(float(np.mean(v == k)), 3) for k, name in CLASSES.items()}


def _prepare(case: LoadedCase):
    brain_full = brain_mask(case.images, case.seg, case.background)
    x0, x1, y0, y1, z0, z1 = bounding_box(brain_full)
    crop = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    brain = brain_full[crop]
    tumour = (case.seg[crop] > 0) if case.seg is not None else np.zeros_like(brain)
    norm = {m: normalise_intensity(v[crop], brain, 0.5, 99.5) for m, v in case.images.items()}
    healthy = brain & ~ndimage.binary_dilation(tumour, iterations=3)
    spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
    return crop, brain, tumour, norm, healthy, spacing


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 2)


def bench_real(ants, case_dir: Path) -> dict:
    case = load_case(brats.find_case(case_dir))
    _, brain, tumour, norm, healthy, spacing = _prepare(case)
    ours, t_ours = _timed(lambda: compute_tissue(norm, brain, tumour, 0, case.case_id))
    mrf = compute_tissue(norm, brain, tumour, 0, case.case_id, mrf_beta=MRF_VARIANT)
    old, t_old = _timed(lambda: previous_method(norm, brain, tumour))
    out = {
        "case": str(case_dir),
        "shape": list(brain.shape),
        "seconds": {"fedsynth": t_ours, "previous": t_old},
    }
    out["shares"] = {"fedsynth": shares(ours, healthy), "previous": shares(old, healthy)}
    for name, chans in (("atropos_t1", ["t1"]), ("atropos_t1_t2_flair", ["t1", "t2", "flair"])):
        ref, t_ref = _timed(
            lambda c=chans: atropos(ants, [norm[m] for m in c], brain & ~tumour, spacing)
        )
        out["seconds"][name] = t_ref
        out["shares"][name] = shares(ref, healthy)
        out[f"dice_fedsynth_vs_{name}"] = dice(ours, ref, healthy)
        out[f"dice_fedsynth_mrf{MRF_VARIANT}_vs_{name}"] = dice(mrf, ref, healthy)
        out[f"dice_previous_vs_{name}"] = dice(old, ref, healthy)
    return out


def bench_phantoms(ants, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cohort = generate_phantom_cohort(
            Path(tmp) / "p", PhantomConfig(subjects=n, sites=min(n, 4), voxel_size=2.0, seed=0)
        )
        rows = []
        for folder in sorted(p for p in Path(cohort).iterdir() if p.is_dir()):
            case = load_case(brats.find_case(folder))
            crop, brain, tumour, norm, healthy, spacing = _prepare(case)
            truth = case.tissue[crop]
            region = healthy & (truth > 0)
            ours = compute_tissue(norm, brain, tumour, 0, case.case_id)
            mrf = compute_tissue(norm, brain, tumour, 0, case.case_id, mrf_beta=MRF_VARIANT)
            old = previous_method(norm, brain, tumour)
            ref = atropos(ants, [norm["t1"]], brain & ~tumour, spacing)
            ref_mc = atropos(
                ants, [norm[m] for m in ("t1", "t2", "flair")], brain & ~tumour, spacing
            )
            rows.append({
                "subject": case.case_id,
                "fedsynth_vs_truth": dice(ours, truth, region),
                f"fedsynth_mrf{MRF_VARIANT}_vs_truth": dice(mrf, truth, region),
                "previous_vs_truth": dice(old, truth, region),
                "atropos_t1_vs_truth": dice(ref, truth, region),
                "atropos_t1_t2_flair_vs_truth": dice(ref_mc, truth, region),
                "fedsynth_vs_atropos_t1": dice(ours, ref, region),
            })  # fmt: skip
    keys = [k for k in rows[0] if k != "subject"]
    mean = {
        k: {c: round(float(np.mean([r[k][c] for r in rows])), 3) for c in CLASSES.values()}
        for k in keys
    }
    return {"subjects": rows, "mean": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ants", help="folder where antspyx was installed (pip --target)")
    parser.add_argument("--phantoms", type=int, default=3)
    parser.add_argument("--out", default="runs/bench/tissue")
    parser.add_argument("--skip-full", action="store_true", help="only the fixture case")
    args = parser.parse_args()
    if args.ants:
        sys.path.insert(0, args.ants)
    import ants  # noqa: PLC0415 - optional, benchmark-only

    cases = [FIXTURE_CASE] + ([SHARED_CASE] if SHARED_CASE.is_dir() and not args.skip_full else [])
    result = {
        "machine": platform.platform(),
        "ants_version": ants.__version__,
        "real": [bench_real(ants, c) for c in cases],
        "phantoms": bench_phantoms(ants, args.phantoms),
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "tissue.json", result)
    print(f"written to {out / 'tissue.json'}")


if __name__ == "__main__":
    main()
