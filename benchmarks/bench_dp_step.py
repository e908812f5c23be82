"""DP training step vs non-DP step: same model, batch and image size, measured in one run.

One pix2pix iteration (G forward, D step, G step) with the networks of ``--config``
(configs/demo.yaml: the demo-sized networks), a full batch of B patients, on CPU threads;
for DP (both G and D private), each of Opacus's usable grad-sample modes: "functorch" (the
default before issue 11: correct but slow) and "hooks" (the default since, exact once
PatientDP makes its inputs contiguous). "ew" cannot handle the U-Net's ConvTranspose. Each DP
mode is also checked against the non-DP step with sigma = 0 and no effective clipping (the
updates must agree), so the fastest mode is also a correct one. The condition is contiguous
NCHW, as the data pipeline (datasets.condition_channels) gives it.

    python benchmarks/bench_dp_step.py [--config configs/demo.yaml] [--out runs/bench/dp_step]
        [--sizes 64 128] [--batch 8]

Writes results.json under --out and prints a table: the "before" (functorch) and "after"
(hooks) ratios DP step / non-DP step side by side, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fedsynth.common.config import load_config
from fedsynth.common.gan.losses import Pix2PixLoss
from fedsynth.common.gan.step import GanParts, train_step
from fedsynth.common.models.registry import build_discriminator, build_generator
from fedsynth.common.privacy.dp import PatientDP

REPO = Path(__file__).resolve().parents[1]
MODES = ("functorch", "hooks")  # before / after issue 11
CONFIG = {"path": REPO / "configs" / "demo.yaml"}  # set by --config


def make_parts(
    mode: str | None, sigma: float = 1.0, clip: float = 1.0, batch: int = 8, opt=torch.optim.Adam
) -> GanParts:
    cfg = load_config(CONFIG["path"], [])
    torch.manual_seed(0)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    kw = dict(noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch,
              generator=torch.Generator().manual_seed(0))  # fmt: skip
    return GanParts(
        generator=g, discriminator=d,
        opt_g=opt(g.parameters(), lr=2e-4), opt_d=opt(d.parameters(), lr=2e-4),
        loss=Pix2PixLoss(),
        dp_d=PatientDP(d, grad_sample_mode=mode, **kw) if mode else None,
        dp_g=PatientDP(g, grad_sample_mode=mode, **kw) if mode else None,
    )  # fmt: skip


def batch_of(size: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    cls = torch.randint(0, 7, (b, size, size), generator=gen)
    cond = torch.nn.functional.one_hot(cls, 7).permute(0, 3, 1, 2).float().contiguous()
    return cond, torch.rand(b, 4, size, size, generator=gen) * 2 - 1


def time_steps(variants: dict[str, GanParts], cond, real, reps: int) -> dict[str, float]:
    """Median seconds per step of each variant. The variants take turns (one step each per
    repetition), so a change in machine load hits all of them alike and the ratios hold."""
    for parts in variants.values():
        train_step(parts, cond, real)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, parts in variants.items():
            t = time.perf_counter()
            train_step(parts, cond, real)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def agrees_with_plain(mode: str, cond, real) -> float:
    """Max |difference| of G parameters after one SGD step: DP (sigma 0, no clipping) vs
    plain; relative to the largest update. (SGD: Adam's first step, lr * sign(g), would
    amplify round-off where g is near 0.)"""
    sgd = torch.optim.SGD
    plain = make_parts(None, opt=sgd)
    dp = make_parts(mode, sigma=0.0, clip=1e9, batch=cond.shape[0], opt=sgd)
    start = torch.cat([p.detach().flatten() for p in plain.generator.parameters()])
    train_step(plain, cond, real)
    train_step(dp, cond, real)
    a = torch.cat([p.detach().flatten() for p in plain.generator.parameters()])
    b = torch.cat([p.detach().flatten() for p in dp.generator.parameters()])
    return float((a - b).abs().max() / (a - start).abs().max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG["path"])
    ap.add_argument("--out", default="runs/bench/dp_step")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    CONFIG["path"] = args.config
    results = []
    for size in args.sizes:
        cond, real = batch_of(size, args.batch)
        variants = {"plain": make_parts(None), **{m: make_parts(m) for m in MODES}}
        seconds = time_steps(variants, cond, real, args.reps)
        plain = seconds["plain"]
        row = {"config": str(args.config), "image_size": size, "batch": args.batch,
               "threads": args.threads, "reps": args.reps, "plain_s": plain}  # fmt: skip
        for mode in MODES:
            row[f"{mode}_s"] = seconds[mode]
            row[f"{mode}_ratio"] = seconds[mode] / plain
            row[f"{mode}_rel_diff_vs_plain"] = agrees_with_plain(mode, cond, real)
        row["fastest_mode"] = min(MODES, key=lambda m: row[f"{m}_s"])
        results.append(row)
        print(
            f"{size:4d} px, batch {args.batch}: plain {plain * 1e3:7.1f} ms | before: functorch "
            f"{row['functorch_s'] * 1e3:7.1f} ms (x{row['functorch_ratio']:.2f}, "
            f"diff {row['functorch_rel_diff_vs_plain']:.1e}) | after: hooks "
            f"{row['hooks_s'] * 1e3:7.1f} ms (x{row['hooks_ratio']:.2f}, "
            f"diff {row['hooks_rel_diff_vs_plain']:.1e})"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
