"""What training and evaluation read from a slice cache: conditioning maps, patient sampling.

Why ``PatientSampler`` samples patients, one slice each: the record differential privacy
protects is a patient, not a slice (see docs/privacy.md). Opacus' accountant assumes each
record joins a batch independently with probability q (Poisson sampling) and contributes one
per-example gradient that is clipped to ``max_grad_norm``. Sampling *patients* with rate q and
taking *one* slice of each makes both true for patients: a patient's whole influence on a
step is one clipped gradient, so the epsilon reported is an epsilon per patient. Sampling
slices instead would let a patient with many slices appear several times in one batch, and
the per-slice epsilon would understate the patient's privacy loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedsynth.common.data.brats import TUMOUR_LABELS

if TYPE_CHECKING:
    from fedsynth.common.data.cache import SliceCache

N_CONDITION_CHANNELS = 7  # bg, CSF, GM, WM, necrotic, oedema, enhancing
CONDITION_NAMES: tuple[str, ...] = ("bg", "CSF", "GM", "WM", "necrotic", "oedema", "enhancing")
_TISSUE_CLASSES = 4  # tissue values 0..3 are channels 0..3; tumour label k is channel 3 + k


def condition_channels(tissue: Any, labels: Any) -> Any:
    """One-hot conditioning maps for the generator, from tissue and tumour labels.

    Args:
        tissue: uint8 (B, S, S) 0 bg, 1 CSF, 2 GM, 3 WM (numpy array or torch tensor).
        labels: uint8 (B, S, S) tumour labels 0..3 (same kind as ``tissue``).

    Returns float32 (B, 7, S, S) of the same kind (torch on the same device), channels
    bg, CSF, GM, WM, necrotic, oedema, enhancing; exactly one channel is 1 per pixel. Tumour
    overrides tissue: a tumour pixel is hot only in its tumour channel.
    """
    if tuple(tissue.shape) != tuple(labels.shape) or len(tissue.shape) != 3:
        raise ValueError(
            f"tissue {tuple(tissue.shape)} and labels {tuple(labels.shape)} must both be (B, S, S)"
        )
    if isinstance(tissue, np.ndarray):
        return _condition_numpy(tissue, labels)
    return _condition_torch(tissue, labels)


def _check_values(t_max: int, l_max: int) -> None:
    if t_max >= _TISSUE_CLASSES or l_max > max(TUMOUR_LABELS):
        raise ValueError(f"tissue must be in 0..3 and labels in 0..3; got max {t_max}, {l_max}")


def _condition_numpy(tissue: np.ndarray, labels: np.ndarray) -> np.ndarray:
    tissue, labels = np.asarray(tissue, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if tissue.size:
        _check_values(int(tissue.max()), int(labels.max()))
    cls = np.where(labels > 0, labels + _TISSUE_CLASSES - 1, tissue)
    out = np.zeros((cls.shape[0], N_CONDITION_CHANNELS, *cls.shape[1:]), dtype=np.float32)
    np.put_along_axis(out, cls[:, None], 1.0, axis=1)
    return out


def _condition_torch(tissue: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    tissue, labels = tissue.long(), labels.long()
    if tissue.numel():
        _check_values(int(tissue.max()), int(labels.max()))
    cls = torch.where(labels > 0, labels + _TISSUE_CLASSES - 1, tissue)
    return F.one_hot(cls, N_CONDITION_CHANNELS).permute(0, 3, 1, 2).to(torch.float32)


class PatientSampler:
    """Poisson sampling of patients, one slice per sampled patient (see the module docstring).

    Each call of ``sample`` includes every patient independently with probability
    ``sample_rate`` (so the batch size varies, and may be 0). For each included patient it
    draws one slice: with probability ``tumour_slice_prob`` a slice showing tumour, otherwise
    one without, each uniformly among that patient's slices of that kind; a patient with
    slices of only one kind gets one of those. So ``tumour_slice_prob`` is exactly the chance
    that a sampled slice shows tumour, for patients with both kinds.
    """

    def __init__(self, cache: SliceCache, sample_rate: float, tumour_slice_prob: float, seed: int):
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if not 0.0 <= tumour_slice_prob <= 1.0:
            raise ValueError(f"tumour_slice_prob must be in [0, 1], got {tumour_slice_prob}")
        self.cache = cache
        self.sample_rate = float(sample_rate)
        self.tumour_slice_prob = float(tumour_slice_prob)
        self.rng = np.random.default_rng(seed)
        self._tumour: list[np.ndarray] = []
        self._healthy: list[np.ndarray] = []
        for start, stop in cache.ranges:
            idx = np.arange(start, stop, dtype=np.int64)
            tumour = cache.has_tumour[start:stop]
            self._tumour.append(idx[tumour])
            self._healthy.append(idx[~tumour])

    @property
    def num_patients(self) -> int:
        return len(self._tumour)

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.num_patients

    def sample(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """int64 (B,) slice indices into the cache, at most one per patient, in patient order.

        ``rng`` defaults to the sampler's own generator (seeded by ``seed``).
        """
        rng = self.rng if rng is None else rng
        chosen = np.flatnonzero(rng.random(self.num_patients) < self.sample_rate)
        return np.array([self._slice_of(p, rng) for p in chosen], dtype=np.int64)

    def _slice_of(self, patient: int, rng: np.random.Generator) -> int:
        tumour, healthy = self._tumour[patient], self._healthy[patient]
        want_tumour = rng.random() < self.tumour_slice_prob
        pool = tumour if (want_tumour and len(tumour)) or not len(healthy) else healthy
        return int(pool[rng.integers(len(pool))])

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond float32 (B, 7, S, S), images float32 (B, 4, S, S) in [-1, 1]) as CPU tensors."""
        indices = np.asarray(indices, dtype=np.int64)
        cond = condition_channels(self.cache.tissue[indices], self.cache.labels[indices])
        images = np.ascontiguousarray(self.cache.images[indices], dtype=np.float32)
        return torch.from_numpy(cond), torch.from_numpy(images)


class SliceDataset(Dataset):
    """Every slice of a cache (or the ``indices`` given), for evaluation and segmentation.

    ``ds[i]`` -> (cond float32 (7, S, S), images float32 (4, S, S) in [-1, 1],
    labels int64 (S, S) 0..3) as torch tensors.
    """

    def __init__(self, cache: SliceCache, indices: np.ndarray | None = None):
        self.cache = cache
        n = len(cache)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError(f"slice indices must be in [0, {n}) for cache '{cache.name}'")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        cond = condition_channels(self.cache.tissue[j : j + 1], self.cache.labels[j : j + 1])[0]
        images = np.array(self.cache.images[j], dtype=np.float32)
        labels = np.array(self.cache.labels[j], dtype=np.int64)
        return torch.from_numpy(cond), torch.from_numpy(images), torch.from_numpy(labels)


def fixed_eval_slices(cache: SliceCache, n: int, seed: int) -> np.ndarray:
    """int64 (min(n, patients),) slice indices for sample grids, one per distinct patient.

    Patients with tumour come first (in a seeded random order), each represented by its
    slice with the most tumour pixels; if fewer than ``n`` patients have tumour, the others
    follow with their slice of most brain. Same cache and seed -> same slices.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cache.patients))
    tumour = {int(p) for p in order if cache.has_tumour[slice(*cache.ranges[p])].any()}
    ranked = [p for p in order if p in tumour] + [p for p in order if p not in tumour]
    picked = []
    for p in ranked[:n]:
        start, stop = cache.ranges[p]
        source = cache.labels if p in tumour else cache.tissue
        area = (np.asarray(source[start:stop]) > 0).sum(axis=(1, 2))
        picked.append(start + int(area.argmax()))
    return np.array(picked, dtype=np.int64)
