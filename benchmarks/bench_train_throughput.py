"""Training throughput of the local trainer: slices per second at 64 and 128 px, DP and not.

The LocalTrainer (the loop every site runs) on an in-memory synthetic slice cache (random
tissue discs with tumour blobs; speed does not depend on content), default demo networks,
train.batch_size expected patients per step, CPU threads as on a developer machine.

    python benchmarks/bench_train_throughput.py [--out runs/bench/train_throughput]
        [--sizes 64 128] [--steps 10] [--threads 2] [--config YAML] [--device cpu|cuda]
        [--precision auto|fp32|bf16]

On a GPU (configs/brats-gpu.yaml's networks and batch, docs/federation.md "GPU"):

    python benchmarks/bench_train_throughput.py --config configs/brats-gpu.yaml \
        --device cuda --sizes 128 --steps 50 --batch 8 --patients 64

Writes results.json under --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsynth.common.config import load_config
from fedsynth.common.gan.trainer import LocalTrainer


@dataclass
class SyntheticCache:
    """The SliceCache fields the trainer reads, in memory."""

    images: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    patient: np.ndarray
    z: np.ndarray
    patients: list[str]
    has_tumour: np.ndarray
    ranges: np.ndarray
    name: str = "synthetic"

    def __len__(self) -> int:
        return len(self.images)


def synthetic_cache(size: int, patients: int, slices: int, seed: int = 0) -> SyntheticCache:
    rng = np.random.default_rng(seed)
    n = patients * slices
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    tissue = np.broadcast_to(
        np.digitize(-r, [-size * 0.45, -size * 0.3, -size * 0.1]), (n, size, size)
    )
    tissue = tissue.astype(np.uint8).copy()
    labels = np.zeros_like(tissue)
    has_tumour = rng.random(n) < 0.6
    for i in np.flatnonzero(has_tumour):
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        labels[i][np.hypot(yy - cy, xx - cx) < size / 10] = 3
    images = rng.uniform(-1, 1, (n, 4, size, size)).astype(np.float32)
    return SyntheticCache(
        images, labels, tissue, np.repeat(np.arange(patients), slices), np.tile(np.arange(slices), patients),
        [f"p{i}" for i in range(patients)], has_tumour,
        np.stack([np.arange(patients) * slices, np.arange(1, patients + 1) * slices], 1),
    )  # fmt: skip


def measure(
    size: int, dp: bool, steps: int, patients: int, batch: int, *,
    config: str | None = None, device: str = "cpu", precision: str = "auto",
) -> dict[str, float]:  # fmt: skip
    overrides = [
        f"preprocess.image_size={size}", f"train.batch_size={batch}", f"train.device={device}",
        f"privacy.enabled={str(dp).lower()}", f"train.steps={steps + 1}", "privacy.delta=1e-4",
        f"train.precision={precision if not dp or precision != 'bf16' else 'fp32'}",
    ]  # fmt: skip
    if config is not None:  # a real config's data section may point at a cohort not here
        overrides.append("data.source=phantom")
    cfg = load_config(config, overrides)
    trainer = LocalTrainer(cfg, synthetic_cache(size, patients, 4), planned_steps=steps + 1)
    trainer.train_steps(1)  # warm-up
    report = trainer.train_steps(steps)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "image_size": size,
        "dp": dp,
        "device": _device_name(trainer.device),
        "precision": str(trainer.amp_dtype or torch.float32).removeprefix("torch."),
        "steps": steps,
        "slices": report.slices,
        "seconds": report.seconds,
        "slices_per_s": report.slices / report.seconds,
        "steps_per_s": steps / report.seconds,
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/train_throughput")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--patients", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", help="take networks etc. from this YAML (default: built-in)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        for dp in (False, True):
            row = measure(size, dp, args.steps, args.patients, args.batch, config=args.config,
                          device=args.device, precision=args.precision)  # fmt: skip
            results.append(row)
            print(
                f"{size:4d} px, DP {'on ' if dp else 'off'}: {row['slices_per_s']:6.1f} slices/s "
                f"({row['steps_per_s']:.2f} steps/s, {row['slices']} slices in {row['seconds']:.1f} s)"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
