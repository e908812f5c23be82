"""Dice / HD95 per BraTS region: conventions, hand-computed cases, MONAI cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from fedsynth.benchmark.metrics import (
    REGIONS,
    SegmentationScores,
    diagonal,
    dice,
    hd95,
    region_mask,
    region_scores,
)

# MONAI warns about its own deprecated argument inside compute_hausdorff_distance.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def _monai(pred: np.ndarray, truth: np.ndarray, spacing=None) -> tuple[float, float]:
    p = torch.from_numpy(pred)[None, None].float()
    t = torch.from_numpy(truth)[None, None].float()
    d = compute_dice(p, t, include_background=True)
    h = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)
    return float(d), float(h)


def test_empty_region_convention():
    empty = np.zeros((6, 7, 8), bool)
    blob = _cube(empty.shape, (1, 1, 1), (3, 3, 3))
    assert dice(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert dice(blob, empty) == 0.0 and dice(empty, blob) == 0.0
    assert hd95(blob, empty) == pytest.approx(math.sqrt(36 + 49 + 64))
    assert hd95(empty, blob, spacing=(2, 1, 1)) == pytest.approx(diagonal((6, 7, 8), (2, 1, 1)))


def test_hand_computed_shifted_cubes():
    truth = _cube((12, 12, 12), (2, 2, 2), (6, 6, 6))
    pred = _cube((12, 12, 12), (4, 2, 2), (8, 6, 6))  # shifted by 2 voxels along x
    assert dice(pred, truth) == pytest.approx(2 * 32 / 128)
    assert hd95(truth, truth) == 0.0 and dice(truth, truth) == 1.0
    assert hd95(pred, truth) == pytest.approx(2.0)
    assert hd95(pred, truth, spacing=(1.5, 1, 1)) == pytest.approx(3.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (1.0, 0.5, 2.0)])
def test_matches_monai(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (10, 16, 14)
    truth = _cube(shape, (2, 3, 1), (8, 11, 9)) | _cube(
        shape, (0, 0, 0), (2, 4, 3)
    )  # touches border
    pred = _cube(shape, (3, 5, 3), (9, 13, 12)) | (rng.random(shape) < 0.03)
    d, h = _monai(pred, truth, spacing)
    assert dice(pred, truth) == pytest.approx(d, abs=1e-6)
    assert hd95(pred, truth, spacing) == pytest.approx(h, rel=1e-5)


def test_regions_follow_brats():
    labels = np.array([0, 1, 2, 3])
    assert region_mask(labels, "WT").tolist() == [False, True, True, True]
    assert region_mask(labels, "TC").tolist() == [False, True, False, True]
    assert region_mask(labels, "ET").tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="unknown region"):
        region_mask(labels, "XX")


def test_region_scores_and_accumulator():
    truth = np.zeros((6, 8, 8), np.uint8)
    truth[2:4, 2:6, 2:6] = 2
    truth[2:4, 3:5, 3:5] = 1  # core, no enhancing
    pred = truth.copy()
    pred[2:4, 3:5, 3:5] = 3  # core predicted as enhancing
    s = region_scores(pred, truth)
    assert s["WT"] == {"dice": 1.0, "hd95": 0.0, "hd95_grid": 0.0}
    assert s["TC"]["dice"] == 1.0  # 1 and 3 both count as core
    assert s["ET"]["dice"] == 0.0 and s["ET"]["hd95"] == pytest.approx(
        diagonal((6, 8, 8), (1, 1, 1))
    )
    acc = SegmentationScores()
    acc.add("a", pred, truth)
    acc.add("b", truth, truth)
    mean = acc.mean()
    assert set(mean) == set(REGIONS) and mean["ET"]["dice"] == 0.5
    assert len(acc.records) == 2 * len(REGIONS)


def test_far_apart_masks_match_monai():
    """Cropping to the union box must not change distances between distant, thin objects."""
    shape = (20, 40, 30)
    truth = _cube(shape, (1, 1, 1), (3, 4, 2))
    pred = _cube(shape, (15, 30, 20), (20, 40, 30)) | _cube(shape, (2, 2, 1), (3, 3, 2))
    for spacing in (None, (2.0, 0.7, 1.3)):
        d, h = _monai(pred, truth, spacing)
        assert dice(pred, truth) == pytest.approx(d, abs=1e-6)
        assert hd95(pred, truth, spacing) == pytest.approx(h, rel=1e-5)


def test_region_scores_in_millimetres_and_grid_steps():
    truth = np.zeros((8, 12, 12), np.uint8)
    truth[2:5, 2:6, 2:6] = 2
    pred = np.roll(truth, 3, axis=2)  # 3 grid steps along the last axis
    s = region_scores(pred, truth, spacing=(4.0, 1.0, 2.5))
    assert s["WT"]["hd95_grid"] == pytest.approx(3.0)
    assert s["WT"]["hd95"] == pytest.approx(7.5)
    acc = SegmentationScores()
    acc.add("a", pred, truth, spacing=(4.0, 1.0, 2.5))
    assert acc.mean()["WT"] == pytest.approx({"dice": 0.25, "hd95": 7.5, "hd95_grid": 3.0})


def test_grid_spacing_follows_the_preprocessing(tmp_path):
    """A case of 2 x 3 x 4 mm voxels whose brain box is 30 x 20 voxels in plane: resized to
    64 px, one grid step is (4, 2 * 30 / 64, 3 * 30 / 64) mm along (z, x, y)."""
    import nibabel as nib

    from fedsynth.benchmark.spacing import grid_spacing

    brain = np.zeros((40, 30, 12), np.float32)
    brain[5:35, 6:26, 2:10] = 1.0
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    case = tmp_path / "case_001"
    case.mkdir()
    for m in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image(brain * 100, affine), case / f"case_001_{m}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(brain, np.uint8), affine), case / "case_001_seg.nii.gz")
    assert grid_spacing(case, 64) == pytest.approx((4.0, 2 * 30 / 64, 3 * 30 / 64))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="bool"):
        hd95(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((2, 2), bool), np.ones((2, 2), bool), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="no patients"):
        SegmentationScores().mean()
