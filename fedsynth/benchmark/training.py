"""Train a segmenter until its validation Dice plateaus; predict and score held-out patients.

Each arm splits its own training patients into a training part and a validation part
(``split_validation``: ``benchmark.val_fraction`` of every cache's patients, at least one
where a cache has three or more). The test patients are never seen here.

Training draws ``batch_size`` slices per step from the union of the training parts (each
slice equally likely, so a larger cache weighs more, as if the cohorts were pooled), a slice
showing tumour with probability ``tumour_slice_prob``, augmented (``augment.py``: flips and
gain, and acquisition blur, gamma and noise). Loss: Dice + cross-entropy (MONAI DiceCELoss)
on the 4 labels; Adam. Every ``eval_every`` steps the validation patients are scored in 3-D
(mean Dice over WT, TC, ET); the weights with the best validation Dice are kept, and training
stops when it has not improved by ``min_delta`` for ``patience`` evaluations, or after
``steps`` steps; the learning rate is multiplied by ``lr_decay`` whenever the validation
Dice has not improved for two evaluations (a plateau schedule: with a constant rate the
validation Dice kept jumping by about 0.1 between evaluations). ``LearningCurve`` records
both curves and says whether the model plateaued. With ``postprocess`` the model's size
threshold for predicted tumours is chosen on the same validation patients
(``postprocess.choose_min_voxels``) and applied to every test prediction.

Prediction stacks a patient's slices (z order) into a (Z, S, S) volume, background outside
the brain.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedsynth.benchmark import augment
from fedsynth.benchmark.metrics import SegmentationScores
from fedsynth.benchmark.postprocess import choose_min_voxels, mean_dice, remove_small_tumours
from fedsynth.common.config import BenchmarkConfig
from fedsynth.common.data.cache import SliceCache


@dataclass(frozen=True)
class TrainSettings:
    """steps: most optimisation steps; eval_every: steps between validation scores;
    patience: evaluations without an improvement > min_delta (validation Dice) before stopping;
    augment: random flips and intensity jitter on every training batch."""

    steps: int
    batch_size: int
    lr: float
    tumour_slice_prob: float
    seed: int
    eval_every: int = 50
    patience: int = 5
    min_delta: float = 0.005
    augment: bool = True
    acquisition_augment: bool = True  # blur, gamma, noise (benchmark/augment.py)
    bias_field_augment: bool = True  # smooth bias field, part of the acquisition family
    texture_augment: bool = True  # correlated noise, part of the acquisition family
    lr_decay: float = 0.5  # learning-rate factor after two evaluations without a gain
    postprocess: bool = True  # choose a small-tumour threshold on the validation patients

    @classmethod
    def from_config(
        cls, b: BenchmarkConfig, seed: int, steps: int | None = None, lr: float | None = None
    ) -> TrainSettings:
        return cls(
            steps=steps if steps is not None else b.steps,
            batch_size=b.batch_size,
            lr=lr if lr is not None else b.lr,
            tumour_slice_prob=b.tumour_slice_prob,
            seed=seed,
            eval_every=b.eval_every,
            patience=b.patience,
            min_delta=b.min_delta,
            augment=b.augment,
            acquisition_augment=b.acquisition_augment,
            bias_field_augment=b.bias_field_augment,
            texture_augment=b.texture_augment,
            lr_decay=b.lr_decay,
            postprocess=b.postprocess,
        )


@dataclass(frozen=True)
class Subset:
    """Some patients of one cache: ``patients`` are indices into ``cache.patients``."""

    cache: SliceCache
    patients: np.ndarray

    @classmethod
    def whole(cls, cache: SliceCache) -> Subset:
        return cls(cache, np.arange(len(cache.patients)))

    def slice_indices(self) -> np.ndarray:
        """int64 indices of this subset's slices in ``cache`` (z order per patient)."""
        parts = [np.arange(*(int(v) for v in self.cache.ranges[p])) for p in self.patients]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def split_validation(
    caches: Sequence[SliceCache], fraction: float, seed: int
) -> tuple[list[Subset], list[Subset]]:
    """(training, validation) subsets: ``fraction`` of each cache's patients (rounded, at least
    one for a cache of >= 3 patients) drawn at random for validation, the rest for training.

    The draw depends only on ``seed`` and the cache's name, so with one seed a site holds out
    the same validation patients in every arm (local, pooled, fedavg...)."""
    train, val = [], []
    for cache in caches:
        rng = np.random.default_rng([*cache.name.encode(), seed])
        n = len(cache.patients)
        k = max(1, round(fraction * n)) if n >= 3 and fraction > 0 else 0
        order = rng.permutation(n)
        train.append(Subset(cache, np.sort(order[k:])))
        if k:
            val.append(Subset(cache, np.sort(order[:k])))
    return train, val


class SlicePool:
    """Slices of several subsets drawn as one pool; ``draw`` -> (images, labels) tensors."""

    def __init__(self, subsets: Sequence[Subset]):
        if not subsets:
            raise ValueError("SlicePool needs at least one cache")
        self.caches = [s.cache for s in subsets]
        local = [s.slice_indices() for s in subsets]
        which = [np.full(len(ix), i, np.int64) for i, ix in enumerate(local)]
        self.which, self.local = np.concatenate(which), np.concatenate(local)
        if not len(self.local):
            raise ValueError("SlicePool: the training patients have no slices")
        has_tumour = np.concatenate(
            [s.cache.has_tumour[ix] for s, ix in zip(subsets, local, strict=True)]
        )
        self.tumour = np.flatnonzero(has_tumour)

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


@dataclass
class LearningCurve:
    """One model's training record. steps[i]: step after which validation was scored;
    train_loss[i]: mean training loss over the steps since the previous score (NaN where the
    trainer does not see losses, e.g. fedavg); val_dice[i]: mean validation Dice over WT, TC,
    ET. best_step: the step whose weights were kept; stopped_early: patience ran out;
    min_tumour_voxels: predicted tumour components smaller than this are dropped at test time
    (chosen on the validation patients; 0: none)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    min_tumour_voxels: int = 0
    patience: int = 5
    min_delta: float = 0.005

    def add(self, step: int, loss: float, val: float) -> bool:
        """Record one evaluation; True when it is the best so far (its weights are kept)."""
        improved = not self.val_dice or val > max(self.val_dice)
        self.steps.append(step)
        self.train_loss.append(loss)
        self.val_dice.append(val)
        if improved:
            self.best_step = step
        return improved

    @property
    def still_rising(self) -> bool:
        """True when the validation Dice has not plateaued: it rose by more than min_delta
        within the last ``patience`` evaluations, or there are too few evaluations to tell."""
        v = self.val_dice
        if len(v) <= self.patience:
            return True
        return max(v[-self.patience :]) > max(v[: -self.patience]) + self.min_delta


def train_segmenter(
    model: nn.Module,
    train: Sequence[Subset],
    val: Sequence[Subset],
    settings: TrainSettings,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
) -> LearningCurve:
    """Train ``model`` in place (see module docstring); at the end it holds the weights with
    the best validation Dice. Without validation patients it trains all ``steps`` and scores
    nothing (the curve then has only training losses, and counts as still rising)."""
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    pool = SlicePool(train)
    rng = np.random.default_rng(settings.seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=settings.lr_decay, patience=1, threshold=settings.min_delta,
        threshold_mode="abs",
    )  # fmt: skip
    curve = LearningCurve(patience=settings.patience, min_delta=settings.min_delta)
    best = copy.deepcopy(model.state_dict())
    losses: list[float] = []
    bar = tqdm(range(settings.steps), desc=desc, unit="step", leave=False, disable=not progress)
    for step in bar:
        model.to(device).train()
        x, y = pool.draw(settings.batch_size, settings.tumour_slice_prob, rng)
        if settings.augment:
            x, y = augment.flips_and_gain(x, y, rng)
        if settings.acquisition_augment:
            x = augment.acquisition(
                x, rng, bias_field=settings.bias_field_augment, texture=settings.texture_augment
            )
        loss = loss_fn(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if val and (done % settings.eval_every == 0 or done == settings.steps):
            score = validation_dice(model, val, device)
            if curve.add(done, float(np.mean(losses)), score):
                best = copy.deepcopy(model.state_dict())
            if settings.lr_decay < 1.0:
                plateau.step(score)
            losses = []
            bar.set_postfix(loss=f"{curve.train_loss[-1]:.3f}", val=f"{curve.val_dice[-1]:.3f}")
            if not curve.still_rising:
                curve.stopped_early = done < settings.steps
                break
    if val:
        model.load_state_dict(best)
        if settings.postprocess:
            curve.min_tumour_voxels = choose_min_voxels(validation_pairs(model, val, device))
    else:
        curve.steps, curve.train_loss = [settings.steps], [float(np.mean(losses))]
        curve.best_step = settings.steps
    return curve


@torch.inference_mode()
def predict_slices(
    model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    """Predicted labels uint8 (Z, S, S) 0..3 of slices float32 (Z, 4, S, S).

    Pixels outside the brain (-1 in every contrast: skull-stripped input) are set to 0, as
    BraTS volumes have no tumour outside the brain mask.
    """
    model.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[i : i + batch_size], np.float32))
        labels = model(x.to(device)).argmax(dim=1).to(torch.uint8).cpu().numpy()
        out.append(np.where((x > -1.0).any(dim=1).numpy(), labels, 0).astype(np.uint8))
    return np.concatenate(out)


def predict_patient(
    model: nn.Module, cache: SliceCache, patient: int, device: torch.device
) -> np.ndarray:
    """Predicted labels uint8 (Z, S, S) of ``cache.patients[patient]``, slices in z order."""
    start, stop = (int(v) for v in cache.ranges[patient])
    return predict_slices(model, cache.images[start:stop], device)


def validation_pairs(
    model: nn.Module, val: Sequence[Subset], device: torch.device
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predicted, true) uint8 (Z, S, S) label volumes of every validation patient."""
    pairs = []
    for subset in val:
        for p in subset.patients:
            start, stop = (int(v) for v in subset.cache.ranges[p])
            pred = predict_patient(model, subset.cache, int(p), device)
            pairs.append((pred, np.asarray(subset.cache.labels[start:stop])))
    return pairs


def validation_dice(model: nn.Module, val: Sequence[Subset], device: torch.device) -> float:
    """Mean over validation patients and the regions WT, TC, ET of the 3-D Dice."""
    return mean_dice(validation_pairs(model, val, device))


def evaluate(
    model: nn.Module,
    test: SliceCache,
    device: torch.device,
    spacings: dict[str, tuple[float, float, float]] | None = None,
    keep: int = 0,
    min_tumour_voxels: int = 0,
) -> tuple[SegmentationScores, dict[str, np.ndarray]]:
    """Score every held-out patient in 3-D (HD95 in mm with ``spacings[subject]``, grid steps
    for a subject without one), predicted tumour components below ``min_tumour_voxels``
    removed; also return the predicted volumes of the first ``keep`` patients (subject id ->
    uint8 (Z, S, S)) for overlays."""
    scores = SegmentationScores()
    kept: dict[str, np.ndarray] = {}
    for p, subject in enumerate(test.patients):
        start, stop = (int(v) for v in test.ranges[p])
        pred = remove_small_tumours(predict_patient(model, test, p, device), min_tumour_voxels)
        spacing = (spacings or {}).get(subject)
        scores.add(subject, pred, np.asarray(test.labels[start:stop]), spacing)
        if p < keep:
            kept[subject] = pred
    return scores, kept
