"""Train a segmenter on slices of one or more caches; predict and score held-out patients.

Training draws ``batch_size`` slices per step from the union of the given caches (each slice
equally likely, so a larger cache weighs more, as if the cohorts were pooled), a slice showing
tumour with probability ``tumour_slice_prob``. Loss: Dice + cross-entropy (MONAI DiceCELoss)
on the 4 labels. Prediction stacks a patient's slices (z order) into a (Z, S, S) volume, background outside
the brain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsynth.benchmark.metrics import SegmentationScores
from fedsynth.common.config import BenchmarkConfig
from fedsynth.common.data.cache import SliceCache


@dataclass(frozen=True)
class TrainSettings:
    """steps, slices per step, Adam learning rate, tumour-slice probability, seed."""

    steps: int
    batch_size: int
    lr: float
    tumour_slice_prob: float
    seed: int

    @classmethod
    def from_config(
        cls, b: BenchmarkConfig, seed: int, steps: int | None = None, lr: float | None = None
    ) -> TrainSettings:
        return cls(
            steps if steps is not None else b.steps,
            b.batch_size,
            lr if lr is not None else b.lr,
            b.tumour_slice_prob,
            seed,
        )


class SlicePool:
    """Slices of several caches drawn as one pool; ``draw`` -> (images, labels) tensors."""

    def __init__(self, caches: Sequence[SliceCache]):
        if not caches:
            raise ValueError("SlicePool needs at least one cache")
        self.caches = list(caches)
        which = [np.full(len(c), i, np.int64) for i, c in enumerate(self.caches)]
        local = [np.arange(len(c), dtype=np.int64) for c in self.caches]
        self.which, self.local = np.concatenate(which), np.concatenate(local)
        self.tumour = np.flatnonzero(np.concatenate([c.has_tumour for c in self.caches]))

    def __len__(self) -> int:
        return len(self.which)

    def draw(
        self, n: int, tumour_prob: float, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images float32 (n, 4, S, S) in [-1, 1], labels int64 (n, 1, S, S) in 0..3."""
        picks = rng.integers(len(self), size=n)
        if len(self.tumour):
            want = rng.random(n) < tumour_prob
            picks[want] = self.tumour[rng.integers(len(self.tumour), size=int(want.sum()))]
        images, labels = [], []
        for k, cache in enumerate(self.caches):
            idx = np.sort(self.local[picks[self.which[picks] == k]])
            if len(idx):
                images.append(np.asarray(cache.images[idx], np.float32))
                labels.append(np.asarray(cache.labels[idx], np.int64))
        x = torch.from_numpy(np.concatenate(images))
        y = torch.from_numpy(np.concatenate(labels))[:, None]
        return x, y


def train_segmenter(
    model: nn.Module,
    caches: Sequence[SliceCache],
    settings: TrainSettings,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place for ``settings.steps`` steps; returns the loss of every step."""
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    pool = SlicePool(caches)
    rng = np.random.default_rng(settings.seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    model.to(device).train()
    losses = []
    bar = tqdm(range(settings.steps), desc=desc, unit="step", leave=False, disable=not progress)
    for _ in bar:
        x, y = pool.draw(settings.batch_size, settings.tumour_slice_prob, rng)
        loss = loss_fn(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


@torch.inference_mode()
def predict_patient(
    model: nn.Module, cache: SliceCache, patient: int, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    """Predicted labels uint8 (Z, S, S) 0..3 of ``cache.patients[patient]``, slices in z order.

    Pixels outside the brain (-1 in every contrast: skull-stripped input) are set to 0, as
    BraTS volumes have no tumour outside the brain mask.
    """
    model.to(device).eval()
    start, stop = (int(v) for v in cache.ranges[patient])
    out = []
    for i in range(start, stop, batch_size):
        x = torch.from_numpy(np.array(cache.images[i : min(i + batch_size, stop)], np.float32))
        labels = model(x.to(device)).argmax(dim=1).to(torch.uint8).cpu().numpy()
        out.append(np.where((x > -1.0).any(dim=1).numpy(), labels, 0).astype(np.uint8))
    return np.concatenate(out)


def evaluate(
    model: nn.Module, test: SliceCache, device: torch.device, keep: int = 0
) -> tuple[SegmentationScores, dict[str, np.ndarray]]:
    """Score every held-out patient in 3-D; also return the predicted volumes of the first
    ``keep`` patients (subject id -> uint8 (Z, S, S)) for overlays."""
    scores = SegmentationScores()
    kept: dict[str, np.ndarray] = {}
    for p, subject in enumerate(test.patients):
        start, stop = (int(v) for v in test.ranges[p])
        pred = predict_patient(model, test, p, device)
        scores.add(subject, pred, np.asarray(test.labels[start:stop]))
        if p < keep:
            kept[subject] = pred
    return scores, kept
