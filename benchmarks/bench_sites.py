"""Sites on one machine: peak memory and round time of Flower's simulation against site count.

    python benchmarks/bench_sites.py [--config configs/demo.yaml] [--sites 2 10 50]
        [--rounds 2] [--local-steps 2] [--out runs/bench/sites]

For each K of ``--sites``: one simulation of K sites (IID split of a phantom cohort of 4K + 8
subjects at 4 mm, so every site has patients; the config's networks, image size and DP),
``--rounds`` rounds of ``--local-steps`` steps. The resident memory of this process and all
its descendants (Ray's processes and workers included) is sampled every 0.2 s; per K: peak
RSS, RSS per site, median round time and time per site-round. Then a least-squares line
of peak RSS against K, and the number of sites it predicts for 80 % of this machine's memory.

Ray runs one worker per CPU (``federation.client_cpus`` = 1) and reuses it for every site,
so a site costs its slice cache and its state on disk, not a process. On a cluster, the
same simulation runs with Ray's ``address`` in ``fedsynth.simulation.backend_config`` (see
docs/federation.md). Results: <out>/sites.json (+ printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np


def tree_rss() -> int:
    """Resident bytes of this process and all its descendants (Linux /proc; Ray included)."""
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
            self.peak = max(self.peak, tree_rss())
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def run_sites(args: argparse.Namespace, k: int, out: Path) -> dict:
    from fedsynth.common.config import load_config
    from fedsynth.simulation import simulate

    cfg = load_config(args.config, [
        "split.policy=iid", f"split.sites={k}", f"phantom.subjects={4 * k + 8}",
        "phantom.voxel_size=4.0", "federation.min_sites=1", f"federation.rounds={args.rounds}",
        f"federation.local_steps={args.local_steps}", "train.batch_size=2",
        "train.eval_every=1000000", "train.sample_every=1000000", *args.set,
    ])  # fmt: skip
    run_dir = out / f"sites-{k}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        simulate(cfg, run_dir)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if r["kind"] == "round"]
    ok = [r for r in rows if r["kind"] == "site" and r["status"] == "ok"]
    round_s = float(np.median([r["seconds"] for r in rounds[1:] or rounds]))
    return {
        "sites": k,
        "sites_ok_per_round": [int(r.get("sites_ok", 0)) for r in rounds],
        "site_rounds_ok": len(ok),
        "peak_gib": mem.peak / 2**30,
        "gib_per_site": mem.peak / 2**30 / k,
        "round_s": round_s,
        "s_per_site_round": round_s / k,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/bench/sites"))
    p.add_argument("--sites", type=int, nargs="+", default=[2, 10])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    points: list[dict] = []
    result: dict = {"config": args.config, "set": args.set, "points": points}
    result["machine_gib"] = machine_gib()
    for k in args.sites:
        points.append(run_sites(args, k, out))
        # Saved after every count: a run stopped at the next (larger) one keeps this one.
        (out / "sites.json").write_text(json.dumps(result, indent=2) + "\n")
        pt = points[-1]
        print(
            f"{k:4d} sites: peak RSS {pt['peak_gib']:.2f} GiB ({1024 * pt['gib_per_site']:.0f} MiB"
            f"/site), round {pt['round_s']:.1f} s ({pt['s_per_site_round']:.2f} s/site), "
            f"{pt['site_rounds_ok']} site-rounds ok, wall {pt['wall_s']:.0f} s",
            flush=True,
        )
    if len(points) > 1:
        ks = np.array([x["sites"] for x in points], float)
        slope, base = np.polyfit(ks, np.array([x["peak_gib"] for x in points]), 1)
        budget = 0.8 * result["machine_gib"]
        result.update(gib_per_extra_site=float(slope), base_gib=float(base))
        result["sites_fitting_80pct"] = int((budget - base) / slope) if slope > 0 else None
        print(
            f"peak RSS ~ {base:.2f} GiB + {1024 * slope:.1f} MiB x sites; "
            f"80 % of {result['machine_gib']:.0f} GiB fits ~{result['sites_fitting_80pct']} sites"
        )
    (out / "sites.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'sites.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
