"""Federation overhead: a federated round against the same local steps without Flower.

    python benchmarks/bench_federation.py [--config configs/demo.yaml] [--sites 2] [--rounds 5]
        [--local-steps 20] [--in-process] [--quality] [--set KEY=VALUE ...]
        [--out runs/bench/federation]

1. Overhead (always): one simulation of ``--sites`` sites (IID split of the config's cohort,
   its networks and DP settings), ``--rounds`` rounds of ``--local-steps`` steps, held-out
   evaluation and sample grids off. Per round: the server's round time (from one round's end
   to the next: sending, the sites' rounds, replies, aggregation, recording) against the
   slowest site's own time for its local steps, measured inside the site in the same round.
   The ratio is paired round by round, so a machine shared with other work shifts both
   sides; its median over rounds 2.. is the figure (round 1 builds each site's trainer).
   Start-up (Ray, workers, data, round 1) is reported separately, and so is one held-out
   evaluation with its sample grid (it runs off the critical path, see
   fedsynth/server/rounds.py).
2. ``--in-process``: the same local steps in this process, one torch thread, no Ray, no state
   I/O (not paired with the rounds: measured after the simulation).
3. ``--quality``: federated (K sites, R rounds x L local steps) vs centralised (pooled
   training patients, R x L steps: the same number of sequential updates) generator,
   held-out MAE and SSIM inside the brain.
Peak memory and scaling with the number of sites: benchmarks/bench_sites.py.
Results: <out>/federation.json (+ printed). Target: ratio <= 1.05 at 20 local steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

TARGET = 1.05


def _config(base: str, overrides: list[str]):
    from fedsynth.common.config import load_config

    return load_config(base, overrides)


def _simulate(cfg, run_dir: Path) -> float:
    from fedsynth.simulation import simulate

    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    simulate(cfg, run_dir)
    return time.perf_counter() - t0


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def site_seconds(run_dir: Path, rows: list[dict]) -> dict[int, list[float]]:
    """Round -> each site's own time for its local steps that round.

    From the server's site rows when the reply carried it, else from each simulated site's
    own log (``sites/<site>/state/log.jsonl``: wall time never leaves a site).
    """
    out: dict[int, list[float]] = {}
    for r in rows:
        if r.get("kind") == "site" and r.get("status") == "ok" and r.get("seconds"):
            out.setdefault(int(r["round"]), []).append(float(r["seconds"]))
    if out:
        return out
    for log in sorted((run_dir / "sites").glob("*/state/log.jsonl")):
        for r in _jsonl(log):
            out.setdefault(int(r["round"]), []).append(float(r["seconds"]))
    return out


def bench_overhead(args: argparse.Namespace, out: Path) -> dict:
    cfg = _config(args.config, [
        "split.policy=iid", f"split.sites={args.sites}", f"federation.min_sites={args.sites}",
        f"federation.rounds={args.rounds}", f"federation.local_steps={args.local_steps}",
        "train.eval_every=1000000", "train.sample_every=1000000", *args.set,
    ])  # fmt: skip
    run_dir = out / "overhead"
    total = _simulate(cfg, run_dir)
    rows = _jsonl(run_dir / "metrics.jsonl")
    rounds = {int(r["round"]): float(r["seconds"]) for r in rows if r["kind"] == "round"}
    sites = site_seconds(run_dir, rows)
    per_round = [
        {
            "round": k,
            "wall_s": rounds[k],
            "slowest_site_s": max(sites[k]),
            "ratio": rounds[k] / max(sites[k]),
        }
        for k in sorted(rounds)
        if sites.get(k)
    ]
    later = per_round[1:] or per_round
    ratios = [x["ratio"] for x in later]
    return {
        "config": args.config,
        "sites": args.sites,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "per_round": per_round,
        "ratio": float(np.median(ratios)),
        "ratio_min": float(min(ratios)),
        "ratio_max": float(max(ratios)),
        "fixed_cost_s": float(np.median([x["wall_s"] - x["slowest_site_s"] for x in later])),
        "total_s": total,
        # Ray, workers' imports, site data and round 1 (trainer construction, calibration)
        "startup_s": total - sum(x["wall_s"] for x in later),
        "evaluation_s": evaluation_seconds(cfg, run_dir),
        "target": TARGET,
    }


def evaluation_seconds(cfg, run_dir: Path) -> float:
    """One held-out evaluation and sample grid of the final generator, as a due round runs it."""
    from dataclasses import replace

    from fedsynth.server.checkpointing import load_generator
    from fedsynth.server.evaluation import HeldOutEvaluator

    t = replace(cfg.train, eval_every=cfg.federation.local_steps)
    t = replace(t, sample_every=cfg.federation.local_steps)
    evaluator = HeldOutEvaluator(replace(cfg, train=t), run_dir / "eval")
    weights = load_generator(run_dir / "checkpoints" / "generator.safetensors")
    evaluator._data()  # the held-out slices are loaded once per run, not per round
    t0 = time.perf_counter()
    evaluator(1, weights)
    return time.perf_counter() - t0


def in_process_seconds(cfg, steps: int, repeats: int) -> float:
    """Median time of ``steps`` local steps of site-0 in this process, one torch thread."""
    import torch

    from fedsynth.client.site import SiteIdentity, load_site_data
    from fedsynth.common.gan.trainer import LocalTrainer

    torch.set_num_threads(1)
    ident = SiteIdentity("site-0", 0, Path("/nonexistent"), None)
    trainer = LocalTrainer(
        cfg, load_site_data(cfg, ident), planned_steps=(repeats + 1) * steps, site="site-0"
    )
    trainer.train_steps(1)  # warm-up
    return float(np.median([trainer.train_steps(steps).seconds for _ in range(repeats)]))


def _heldout_quality(cfg, weights: dict[str, np.ndarray], out: Path) -> dict[str, float]:
    from fedsynth.server.evaluation import HeldOutEvaluator

    return HeldOutEvaluator(cfg, out).quality(weights)["mean"]


def bench_quality(args: argparse.Namespace, out: Path) -> dict:
    from fedsynth.common.data.cache import site_slices
    from fedsynth.common.data.cohort import load_split, resolve_cohort
    from fedsynth.common.gan.trainer import LocalTrainer
    from fedsynth.server.checkpointing import load_generator

    cfg = _config(args.config, [
        f"federation.rounds={args.rounds}", f"federation.local_steps={args.local_steps}",
        "federation.min_sites=1", "train.eval_every=1000000", *args.set,
    ])  # fmt: skip
    run_dir = out / "quality-fed"
    _simulate(cfg, run_dir)
    fed = load_generator(run_dir / "checkpoints" / "generator.safetensors")
    split = load_split(resolve_cohort(cfg))
    pooled = sorted(s for subjects in split.sites.values() for s in subjects)
    steps = args.rounds * args.local_steps
    central = LocalTrainer(
        cfg, site_slices(cfg, pooled, "pooled"), planned_steps=steps, site="central"
    )
    t0 = time.perf_counter()
    central.train_steps(steps)
    return {
        "steps": steps,
        "federated": _heldout_quality(cfg, fed, out),
        "centralised": _heldout_quality(cfg, central.get_generator_weights(), out),
        "centralised_s": time.perf_counter() - t0,
        "sites": cfg.split.sites,
        "dp": cfg.privacy.enabled,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/demo.yaml", help="networks, data, DP settings")
    p.add_argument("--out", type=Path, default=Path("runs/bench/federation"))
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--in-process", action="store_true", help="also time the steps in-process")
    p.add_argument("--quality", action="store_true", help="also compare with central training")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be >= 2 (round 1 is start-up)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"overhead": bench_overhead(args, out)}
    o = results["overhead"]
    if args.in_process:
        cfg = _config(args.config, [f"split.sites={args.sites}", "split.policy=iid", *args.set])
        o["in_process_s"] = in_process_seconds(cfg, args.local_steps, repeats=3)
        o["ratio_vs_in_process"] = float(np.median([x["wall_s"] for x in o["per_round"][1:]]))
        o["ratio_vs_in_process"] /= o["in_process_s"]
    if args.quality:
        results["quality"] = bench_quality(args, out)
    (out / "federation.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=1))
    print(
        f"federated round / same local steps without Flower: {o['ratio']:.3f} (median of rounds "
        f"2-{args.rounds}, range {o['ratio_min']:.3f}-{o['ratio_max']:.3f}; target <= {TARGET}); "
        f"fixed cost {o['fixed_cost_s']:.2f} s per round; start-up {o['startup_s']:.1f} s; "
        f"one held-out evaluation {o['evaluation_s']:.2f} s (off the critical path)"
    )
    print(f"wrote {out / 'federation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
