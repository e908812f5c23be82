"""A tiny in-memory SliceCache stand-in for the GAN, privacy and trainer tests (no cohort on
disk); sampling uses the real datasets.PatientSampler."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsynth.common.config import Config, load_config


@dataclass
class FakeCache:
    images: np.ndarray  # float32 (N, 4, S, S) in [-1, 1]
    labels: np.ndarray  # uint8 (N, S, S)
    tissue: np.ndarray  # uint8 (N, S, S)
    patient: np.ndarray  # int64 (N,)
    z: np.ndarray
    patients: list[str]
    has_tumour: np.ndarray
    ranges: np.ndarray  # int64 (P, 2) [start, stop) slices of each patient
    name: str = "fake"

    def __len__(self) -> int:
        return int(self.images.shape[0])


def fake_cache(patients: int = 6, slices: int = 3, size: int = 16, seed: int = 0) -> FakeCache:
    """A brain-like disc with tissue rings and a tumour blob in some slices."""
    rng = np.random.default_rng(seed)
    n = patients * slices
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    tissue = np.zeros((n, size, size), np.uint8)
    tissue[:, r < size * 0.45] = 3
    tissue[:, r < size * 0.3] = 2
    tissue[:, r < size * 0.1] = 1
    labels = np.zeros_like(tissue)
    has_tumour = rng.random(n) < 0.5
    for i in np.flatnonzero(has_tumour):
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        rr = np.hypot(yy - cy, xx - cx)
        labels[i][rr < 3] = 2
        labels[i][rr < 2] = 3
    base = np.array([-0.2, 0.0, 0.3, 0.1], np.float32)[:, None, None]
    images = np.where(tissue[:, None] > 0, base + 0.2 * tissue[:, None] / 3, -1.0)
    images = images + 0.4 * (labels[:, None] > 0) + rng.normal(0, 0.05, (n, 4, size, size))
    images = np.clip(np.where(tissue[:, None] > 0, images, -1.0), -1, 1).astype(np.float32)
    return FakeCache(
        images=images,
        labels=labels,
        tissue=tissue,
        patient=np.repeat(np.arange(patients), slices).astype(np.int64),
        z=np.tile(np.arange(slices), patients).astype(np.int64),
        patients=[f"p{i:03d}" for i in range(patients)],
        has_tumour=has_tumour,
        ranges=np.stack([np.arange(patients) * slices, np.arange(1, patients + 1) * slices], 1),
    )


def tiny_config(*overrides: str) -> Config:
    """A small model on 16-px slices; DP on."""
    base = [
        "model.generator_channels=[4,8]",
        "model.discriminator_channels=4",
        "model.discriminator_layers=2",
        "model.norm_groups=2",
        "preprocess.image_size=16",
        "train.batch_size=3",
        "train.steps=4",
        "train.device=cpu",
        "privacy.delta=1e-3",
        "privacy.target_epsilon=50",
    ]
    return load_config(None, [*base, *overrides])
