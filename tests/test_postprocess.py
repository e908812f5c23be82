"""Small-tumour removal and its threshold chosen on validation patients."""

import numpy as np

from fedsynth.benchmark.postprocess import (
    CANDIDATE_MIN_VOXELS,
    choose_min_voxels,
    mean_dice,
    remove_small_tumours,
)


def _volume() -> np.ndarray:
    return np.zeros((16, 32, 32), np.uint8)


def _tumour(labels: np.ndarray, z: int, y: int, x: int, side: int, label: int = 2) -> None:
    labels[z : z + side, y : y + side, x : x + side] = label


def test_components_below_the_threshold_are_removed_and_larger_ones_kept():
    pred = _volume()
    _tumour(pred, 2, 2, 2, 6)  # 216 voxels, labels 2 with a core of 3 inside
    pred[4, 4, 4] = 3
    _tumour(pred, 12, 25, 25, 2, label=1)  # 8 voxels
    out = remove_small_tumours(pred, 10)
    assert out[12:14, 25:27, 25:27].sum() == 0
    np.testing.assert_array_equal(out[:10], pred[:10])
    assert pred[12:14, 25:27, 25:27].sum() > 0  # the input is not changed
    np.testing.assert_array_equal(remove_small_tumours(pred, 0), pred)


def test_diagonal_neighbours_form_one_component():
    pred = _volume()
    for i in range(6):  # a diagonal line of 6 voxels touching only at corners
        pred[i, i, i] = 2
    np.testing.assert_array_equal(remove_small_tumours(pred, 6), pred)
    assert remove_small_tumours(pred, 7).sum() == 0


def test_threshold_is_chosen_by_validation_dice():
    big = _volume()
    _tumour(big, 2, 2, 2, 8)
    healthy_truth = _volume()
    healthy_pred = _volume()
    _tumour(healthy_pred, 10, 20, 20, 3)  # 27 stray voxels in a tumour-free brain
    pairs = [(big.copy(), big), (healthy_pred, healthy_truth)]
    k = choose_min_voxels(pairs)
    assert k == 30  # the smallest candidate that clears 27 voxels and keeps the 512
    cleaned = [(remove_small_tumours(p, k), t) for p, t in pairs]
    assert mean_dice(cleaned) == 1.0 > mean_dice(pairs)


def test_no_cleaning_when_it_would_delete_a_true_small_tumour():
    small_truth = _volume()
    _tumour(small_truth, 5, 5, 5, 2)  # a true 8-voxel tumour, found
    assert choose_min_voxels([(small_truth.copy(), small_truth)]) == 0
    assert choose_min_voxels([]) == 0
    assert CANDIDATE_MIN_VOXELS[0] == 0
