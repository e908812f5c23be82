"""DP training step vs non-DP step: same networks, trainable set, batch and size, one run.

One pix2pix iteration (G forward, D step, G step) with the networks of ``--config``
(configs/demo.yaml: resunet2d [8, 16, 32, 64] and an 8-channel PatchGAN), B patients with
V views each (``train.views`` of the config), on CPU threads, for each trainable set of the
generator (``privacy.trainable``; D is always trained whole):

- **non-DP step** (the baseline): the same networks with the same parameters trainable,
  the mean loss over the batch backpropagated once, Adam; no per-sample gradients, no
  clipping, no noise.
- **DP step**, G and D both private (the DP-SGD of fedsynth.common.privacy.dp: per-patient
  gradients, clipped, summed, noised), in each grad-sample mode: "hooks" (Opacus's
  GradSampleModule and formulas: the default before issue 17) and "fast" (fedsynth's
  per_sample.py and conv formulas: the default since). ``--modes`` adds "functorch".
- ``--shares``: also the fast DP step with only D private and with only G private (not a
  valid DP configuration: the split of the DP cost between the two networks).

The variants take turns step by step, so a change in machine load hits all alike; the
ratios DP / non-DP are what the script claims, not the absolute times. Each DP mode is also
checked against the non-DP step with sigma = 0 and no effective clipping (the updates must
agree), so a fast mode is also a correct one. Prints ``uptime``'s load average with the
table: a ratio taken on a loaded machine is not comparable.

    python benchmarks/bench_dp_step.py [--config configs/demo.yaml] [--out runs/bench/dp_step]
        [--sizes 64 128] [--trainable all norm+bias] [--batch 8] [--views V] [--threads 2]

Writes results.json under --out.
"""

from __future__ import annotations

import fedsynth  # noqa: F401 -- first: sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split
import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from fedsynth.common.config import load_config
from fedsynth.common.gan.losses import Pix2PixLoss
from fedsynth.common.gan.step import GanParts, train_step
from fedsynth.common.gan.trainable import count_parameters, select_trainable
from fedsynth.common.models.registry import build_discriminator, build_generator
from fedsynth.common.privacy.dp import PatientDP

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODES = ("hooks", "fast")  # before / after issue 17


def make_parts(
    config: Path,
    trainable: str,
    mode: str | None,
    *,
    private: str = "dg",
    sigma: float = 1.0,
    clip: float = 1.0,
    batch: int = 8,
    opt=torch.optim.Adam,
) -> GanParts:
    """G and D of ``config`` (same initial weights every call), G's ``trainable`` set,
    DP in grad-sample ``mode`` (None: the non-DP step) on the networks in ``private``."""
    cfg = load_config(config, [])
    torch.manual_seed(0)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    select_trainable(g, trainable)  # before PatientDP wraps G, as the trainer does
    kw = dict(noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch,
              generator=torch.Generator().manual_seed(0))  # fmt: skip
    return GanParts(
        generator=g, discriminator=d,
        opt_g=opt([p for p in g.parameters() if p.requires_grad], lr=2e-4),
        opt_d=opt(d.parameters(), lr=2e-4),
        loss=Pix2PixLoss(),
        dp_d=PatientDP(d, grad_sample_mode=mode, **kw) if mode and "d" in private else None,
        dp_g=PatientDP(g, grad_sample_mode=mode, **kw) if mode and "g" in private else None,
    )  # fmt: skip


def batch_of(size: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond (rows, 7, S, S) one-hot, contiguous NCHW as datasets.condition_channels gives
    it; real (rows, 4, S, S) in [-1, 1])."""
    gen = torch.Generator().manual_seed(1)
    cls = torch.randint(0, 7, (rows, size, size), generator=gen)
    cond = torch.nn.functional.one_hot(cls, 7).permute(0, 3, 1, 2).float().contiguous()
    return cond, torch.rand(rows, 4, size, size, generator=gen) * 2 - 1


def time_steps(variants: dict[str, GanParts], cond, real, views: int, reps: int) -> dict:
    """Median seconds per step of each variant, the variants taking turns."""
    for parts in variants.values():
        train_step(parts, cond, real, views)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, parts in variants.items():
            t = time.perf_counter()
            train_step(parts, cond, real, views)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def agrees_with_plain(config: Path, trainable: str, mode: str, cond, real, views: int) -> float:
    """Max |difference| of G parameters after one SGD step, DP (sigma 0, no clipping) vs
    the non-DP step, relative to the largest update. (SGD: Adam's first step, lr * sign(g),
    would amplify round-off where g is near 0.)"""
    sgd, batch = torch.optim.SGD, cond.shape[0] // views
    plain = make_parts(config, trainable, None, opt=sgd)
    dp = make_parts(config, trainable, mode, sigma=0.0, clip=1e9, batch=batch, opt=sgd)
    start = torch.cat([p.detach().flatten() for p in plain.generator.parameters()])
    train_step(plain, cond, real, views)
    train_step(dp, cond, real, views)
    a = torch.cat([p.detach().flatten() for p in plain.generator.parameters()])
    b = torch.cat([p.detach().flatten() for p in dp.generator.parameters()])
    return float((a - b).abs().max() / (a - start).abs().max())


def measure(args, size: int, trainable: str) -> dict:
    """One row: the non-DP step and every DP mode, side by side."""
    views = args.views
    cond, real = batch_of(size, args.batch * views)
    variants = {"plain": make_parts(args.config, trainable, None, batch=args.batch)}
    for mode in args.modes:
        variants[mode] = make_parts(args.config, trainable, mode, batch=args.batch)
    if args.shares:
        for private in ("d", "g"):
            variants[f"fast_{private}_only"] = make_parts(
                args.config, trainable, "fast", batch=args.batch, private=private
            )
    g_trainable, g_total = count_parameters(variants["plain"].generator)
    load = os.getloadavg()
    seconds = time_steps(variants, cond, real, views, args.reps)
    plain = seconds["plain"]
    row = {
        "config": str(args.config), "image_size": size, "trainable": trainable,
        "g_trainable_params": g_trainable, "g_params": g_total,
        "d_params": sum(p.numel() for p in variants["plain"].discriminator.parameters()),
        "batch": args.batch, "views": views, "threads": args.threads, "reps": args.reps,
        "plain_s": plain, "load_before": load, "load_after": os.getloadavg(),
    }  # fmt: skip
    for mode in args.modes:
        row[f"{mode}_s"] = seconds[mode]
        row[f"{mode}_ratio"] = seconds[mode] / plain
        row[f"{mode}_rel_diff_vs_plain"] = agrees_with_plain(
            args.config, trainable, mode, cond, real, views
        )
    for name in [v for v in variants if v.endswith("_only")]:
        row[f"{name}_ratio"] = seconds[name] / plain
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    ap.add_argument("--out", default="runs/bench/dp_step")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--trainable", nargs="+", default=["all", "norm+bias"])
    ap.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES))
    ap.add_argument("--batch", type=int, default=8, help="patients per step")
    ap.add_argument("--views", type=int, default=None, help="default: the config's train.views")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shares", action="store_true", help="also D-only and G-only DP steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.views is None:
        args.views = load_config(args.config, []).train.views
    results = []
    print(f"non-DP step: same networks and trainable set, mean loss, one backward, no "
          f"per-sample gradients; DP: G and D private; {args.batch} patients x {args.views} "
          f"views, {args.threads} threads")  # fmt: skip
    for size in args.sizes:
        for trainable in args.trainable:
            row = measure(args, size, trainable)
            results.append(row)
            cells = " | ".join(
                f"{m} {row[f'{m}_s'] * 1e3:6.1f} ms x{row[f'{m}_ratio']:.2f} "
                f"(diff {row[f'{m}_rel_diff_vs_plain']:.0e})"
                for m in args.modes
            )
            print(f"{size:4d} px, G trainable {trainable:9s} ({row['g_trainable_params']:6d} of "
                  f"{row['g_params']}): non-DP {row['plain_s'] * 1e3:6.1f} ms | {cells} | load "
                  f"{row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f}")  # fmt: skip
            if args.shares:
                print(f"      fast DP on D only x{row['fast_d_only_ratio']:.2f}, on G only "
                      f"x{row['fast_g_only_ratio']:.2f}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
