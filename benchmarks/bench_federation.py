"""Federation figures: Flower overhead per round, memory per simulated site, fed vs central.

    python benchmarks/bench_federation.py [--config configs/smoke.yaml] [--out runs/bench/federation]
        [--sites 2 4 8] [--rounds 4] [--local-steps 10] [--skip-memory] [--skip-quality]

1. Overhead: one simulation (2 sites, --rounds x --local-steps); per round the server's wall
   time against the slowest site's own training time (what the same local steps cost without
   Flower), and against the same steps run in this process with one torch thread (no Ray, no
   state I/O). Start-up (Ray, workers, data) is reported separately.
2. Memory: peak resident memory of this process and all its descendants (Ray included) while
   simulating K sites (1 round), for each K of --sites; per-site slope by least squares.
3. Quality: federated (K sites, R rounds x L local steps) vs centralised (pooled training
   patients, R x L steps: the same number of sequential updates) generator, held-out MAE and
   SSIM inside the brain. DP as in the config.
Results: <out>/federation.json (+ printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _tree_rss() -> int:
    """Resident bytes of this process and all its descendants (Linux /proc; Ray included)."""
    import os

    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/status").read_text().splitlines()
        except OSError:
            continue
        info = dict(line.split(":", 1) for line in fields if ":" in line)
        parent[int(entry)] = int(info.get("PPid", "0").strip())
        rss[int(entry)] = int(info.get("VmRSS", "0 kB").split()[0]) * 1024
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(p, 0) for p in tree)


class PeakMemory:
    """Samples the RSS of this process tree every 0.2 s; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss())
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


EXTRA: list[str] = []  # --set key=value, applied to every config of the run


def _config(base: str, out: Path, *overrides: str):
    from fedsynth.common.config import load_config

    return load_config(base, [f"data.cache_dir={out / 'cache'}", *overrides, *EXTRA])


def _simulate(cfg, run_dir: Path) -> float:
    import shutil

    from fedsynth.simulation import simulate

    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    simulate(cfg, run_dir)
    return time.perf_counter() - t0


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def in_process_seconds(cfg, site: str, steps: int, repeats: int) -> float:
    """Median time of ``steps`` local steps at ``site`` in this process, one torch thread."""
    import torch

    from fedsynth.client.app import public_site_seed
    from fedsynth.client.site import SiteIdentity, load_site_data
    from fedsynth.common.gan.trainer import LocalTrainer

    torch.set_num_threads(1)
    ident = SiteIdentity(site, int(site.split("-")[1]), Path("/nonexistent"), None)
    trainer = LocalTrainer(
        cfg,
        load_site_data(cfg, ident),
        planned_steps=(repeats + 1) * steps,
        site=site,
        seed=public_site_seed(cfg, ident),
    )
    trainer.train_steps(1)  # warm-up
    times = [trainer.train_steps(steps).seconds for _ in range(repeats)]
    return float(np.median(times))


def bench_overhead(args: argparse.Namespace, out: Path) -> dict:
    cfg = _config(
        args.config, out, "split.policy=iid", "split.sites=2", "federation.min_sites=2",
        f"federation.rounds={args.rounds}", f"federation.local_steps={args.local_steps}",
        "train.eval_every=1000000",
    )  # fmt: skip
    run_dir = out / "overhead"
    total = _simulate(cfg, run_dir)
    rows = _rows(run_dir)
    rounds = [r for r in rows if r["kind"] == "round"]
    result = {
        "sites": 2,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "total_s": total,
        "per_round": [],
    }
    for r in rounds:
        sites = [
            s
            for s in rows
            if s["kind"] == "site" and s["round"] == r["round"] and s["status"] == "ok"
        ]
        slowest = max(s["seconds"] for s in sites)
        result["per_round"].append(
            {
                "round": r["round"],
                "wall_s": r["seconds"],
                "slowest_site_s": slowest,
                "ratio": r["seconds"] / slowest,
            }
        )
    later = result["per_round"][1:] or result["per_round"]
    result["ratio_vs_site_compute"] = float(np.median([x["ratio"] for x in later]))
    result["startup_s"] = total - sum(x["wall_s"] for x in result["per_round"])
    result["in_process_s"] = in_process_seconds(cfg, "site-0", args.local_steps, repeats=3)
    result["ratio_vs_in_process"] = (
        float(np.median([x["wall_s"] for x in later])) / result["in_process_s"]
    )
    return result


def bench_memory(args: argparse.Namespace, out: Path) -> dict:
    points = []
    for k in args.sites:
        cfg = _config(
            args.config, out, "split.policy=iid", f"split.sites={k}", f"phantom.subjects={max(14, 4 * k + 4)}",
            "federation.min_sites=1", "federation.rounds=1", "federation.local_steps=2",
            "train.batch_size=2", "train.eval_every=1000000",
        )  # fmt: skip
        with PeakMemory() as mem:
            wall = _simulate(cfg, out / f"memory-{k}")
        points.append({"sites": k, "peak_gib": mem.peak / 2**30, "wall_s": wall})
        print(f"  {k} sites: peak {mem.peak / 2**30:.2f} GiB, {wall:.1f} s", flush=True)
    ks = np.array([p["sites"] for p in points], float)
    gib = np.array([p["peak_gib"] for p in points])
    slope, intercept = np.polyfit(ks, gib, 1) if len(ks) > 1 else (float("nan"), gib[0])
    budget = 24.0 * 0.8  # leave 20 % of the 24 GiB machine to the OS
    return {
        "points": points,
        "gib_per_extra_site": float(slope),
        "base_gib": float(intercept),
        "sites_fitting_in_19_2_gib": float((budget - intercept) / slope) if slope > 0 else None,
    }


def _heldout_quality(cfg, weights: dict[str, np.ndarray], out: Path) -> dict[str, float]:
    from fedsynth.server.evaluation import HeldOutEvaluator

    return HeldOutEvaluator(cfg, out).quality(weights)["mean"]


def bench_quality(args: argparse.Namespace, out: Path) -> dict:
    from fedsynth.common.data.cache import site_slices
    from fedsynth.common.data.cohort import load_split, resolve_cohort
    from fedsynth.common.gan.trainer import LocalTrainer
    from fedsynth.server.checkpointing import load_generator

    cfg = _config(
        args.config, out, f"federation.rounds={args.rounds}", f"federation.local_steps={args.local_steps}",
        "federation.min_sites=1", "train.eval_every=1000000", f"train.batch_size={args.batch_size}",
    )  # fmt: skip
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
    central_s = time.perf_counter() - t0
    return {
        "steps": steps,
        "federated": _heldout_quality(cfg, fed, out),
        "centralised": _heldout_quality(cfg, central.get_generator_weights(), out),
        "centralised_s": central_s,
        "sites": cfg.split.sites,
        "dp": cfg.privacy.enabled,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/smoke.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/bench/federation"))
    p.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument(
        "--batch-size", type=int, default=1, help="expected patients per step (quality run)"
    )
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args(argv)
    EXTRA[:] = args.set
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"config": args.config}
    results["set"] = args.set
    if not args.skip_overhead:
        print("overhead ...", flush=True)
        results["overhead"] = bench_overhead(args, out)
        print(json.dumps(results["overhead"], indent=1), flush=True)
    if not args.skip_memory:
        print("memory ...", flush=True)
        results["memory"] = bench_memory(args, out)
    if not args.skip_quality:
        print("quality ...", flush=True)
        results["quality"] = bench_quality(args, out)
    (out / "federation.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "overhead"}, indent=1))
    print(f"wrote {out / 'federation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
