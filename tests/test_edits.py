"""Tumour edits keep label cases valid: value sets, tumour in brain, nesting, volume direction."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.config import SynthesisConfig
from fedsynth.synthesis.case import InMemoryPool, LabelCase
from fedsynth.synthesis.edits import (
    apply_random_edits,
    core_enclosed,
    fill_tissue,
    random_translation,
    remove_tumour,
    rotate_tumour,
    scale_tumour,
    translate_tumour,
    transplant_tumour,
    tumour_regions,
)

SHAPE = (40, 44, 36)


def _ellipsoid(shape, centre, radii):
    grid = np.indices(shape, dtype=float)
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii, strict=True))
    return r <= 1.0


def make_case(
    case_id="s1",
    tumour_centre=(22, 20, 18),
    tumour=True,
    shape=SHAPE,
    voxel=(2.0, 2.0, 2.0),
    elongated=False,
) -> LabelCase:
    """A toy brain (CSF shell, GM, WM core) with a nested tumour: necrosis in an enhancing
    rim, enclosed by oedema."""
    centre = np.array(shape) / 2
    brain = _ellipsoid(shape, centre, np.array(shape) * 0.42)
    tissue = np.zeros(shape, np.uint8)
    tissue[brain] = 1
    tissue[_ellipsoid(shape, centre, np.array(shape) * 0.36) & brain] = 2
    tissue[_ellipsoid(shape, centre, np.array(shape) * 0.25) & brain] = 3
    labels = np.zeros(shape, np.uint8)
    if tumour:
        k = np.array([2.0, 1.0, 1.0]) if elongated else np.ones(3)
        labels[_ellipsoid(shape, tumour_centre, 7 * k)] = 2
        labels[_ellipsoid(shape, tumour_centre, 4.5 * k)] = 3
        labels[_ellipsoid(shape, tumour_centre, 2.5 * k)] = 1
        labels[~brain] = 0
    return LabelCase(
        case_id=case_id,
        tissue=tissue,
        labels=labels,
        brain=brain,
        affine=np.diag([*voxel, 1.0]),
        source="cohort",
        source_subject=case_id,
        anatomy_subject=case_id,
    )


def _volumes(case):
    return [int(np.count_nonzero(m)) for m in tumour_regions(case.labels)]


def _assert_valid(case):
    assert case.problems() == []
    whole, core, enh = tumour_regions(case.labels)
    assert not np.any(whole & ~case.brain)
    assert np.all(core <= whole) and np.all(enh <= core)


def test_toy_case_is_valid_and_enclosed():
    case = make_case()
    _assert_valid(case)
    assert core_enclosed(case.labels, case.brain)


def test_translate_moves_tumour_by_the_shift_and_keeps_its_volume():
    case = make_case()
    moved, record = translate_tumour(case, (4.0, -6.0, 0.0))
    _assert_valid(moved)
    before = np.argwhere(case.labels > 0).mean(axis=0)
    after = np.argwhere(moved.labels > 0).mean(axis=0)
    np.testing.assert_allclose(after - before, [2, -3, 0], atol=1e-6)
    assert _volumes(moved) == _volumes(case)
    assert record.kind == "translate" and record.params["voxels_clipped_at_brain"] == 0
    assert moved.edits[-1]["edit"] == "translate"
    assert case.edits == []  # input untouched


def test_translate_out_of_the_brain_is_clipped_to_the_brain():
    case = make_case()
    moved, record = translate_tumour(case, (40.0, 0.0, 0.0))
    _assert_valid(moved)
    assert record.params["voxels_clipped_at_brain"] > 0
    assert np.count_nonzero(moved.labels) < np.count_nonzero(case.labels)


def test_vacated_voxels_get_tissue_and_the_brain_stays_covered():
    case = make_case()
    moved = translate_tumour(case, (-10.0, 0.0, 0.0)).case
    vacated = (case.labels > 0) & (moved.labels == 0)
    assert vacated.any()
    assert np.all(np.isin(moved.tissue[vacated], [1, 2, 3]))
    assert np.array_equal(moved.tissue > 0, moved.brain)


def test_random_translation_never_leaves_the_brain():
    case = make_case(tumour_centre=(28, 22, 18))  # near the edge: little room on one side
    rng = np.random.default_rng(0)
    for _ in range(10):
        shift = random_translation(case, 30.0, rng)
        moved, record = translate_tumour(case, shift)
        assert record.params["voxels_clipped_at_brain"] == 0
        assert _volumes(moved) == _volumes(case)


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_scale_changes_every_region_in_the_requested_direction(factor):
    case = make_case(tumour_centre=(20, 22, 18))
    scaled, record = scale_tumour(case, factor)
    _assert_valid(scaled)
    for before, after in zip(_volumes(case), _volumes(scaled), strict=True):
        assert (after > before) if factor > 1 else (after < before)
    ratio = np.count_nonzero(scaled.labels) / np.count_nonzero(case.labels)
    assert ratio == pytest.approx(factor**3, rel=0.2)
    assert core_enclosed(scaled.labels, scaled.brain)  # oedema still surrounds the core
    assert record.params["after"]["whole_ml"] != record.params["before"]["whole_ml"]


def test_scale_rejects_non_positive_factor():
    with pytest.raises(ValueError, match="scale factor"):
        scale_tumour(make_case(), 0.0)


def test_strong_shrink_keeps_nesting_even_when_the_rim_thins():
    case = make_case(tumour_centre=(20, 22, 18))
    shrunk = scale_tumour(case, 0.45).case
    _assert_valid(shrunk)
    assert core_enclosed(shrunk.labels, shrunk.brain) or not tumour_regions(shrunk.labels)[1].any()


def test_rotate_keeps_volume_and_turns_an_elongated_tumour():
    case = make_case(tumour_centre=(20, 22, 18), elongated=True)
    rotated, record = rotate_tumour(case, (0.0, 0.0, 90.0))
    _assert_valid(rotated)
    assert np.count_nonzero(rotated.labels) == pytest.approx(np.count_nonzero(case.labels), rel=0.1)
    extent = lambda m: np.ptp(np.argwhere(m), axis=0)  # noqa: E731
    e0, e1 = extent(case.labels > 0), extent(rotated.labels > 0)
    assert e0[0] > e0[1] and e1[1] > e1[0]  # long axis moved from axis 0 to axis 1
    assert record.params["angles_deg"] == [0.0, 0.0, 90.0]


def test_anisotropic_rotation_is_in_millimetres():
    case = make_case(voxel=(1.0, 1.0, 2.0), tumour_centre=(20, 22, 18))
    rotated = rotate_tumour(case, (90.0, 0.0, 0.0)).case
    _assert_valid(rotated)
    vol = lambda c: np.count_nonzero(c.labels) * np.prod(c.voxel_size)  # noqa: E731
    assert vol(rotated) == pytest.approx(vol(case), rel=0.15)


def test_remove_makes_a_healthy_case_with_plausible_tissue():
    case = make_case()
    healthy, record = remove_tumour(case)
    _assert_valid(healthy)
    assert not healthy.has_tumour
    was = case.labels > 0
    assert np.all(np.isin(healthy.tissue[was], [1, 2, 3]))
    assert np.array_equal(healthy.tissue[~was], case.tissue[~was])
    assert record.params["before"]["whole_ml"] > 0


def test_transplant_onto_a_healthy_brain_keeps_recipient_anatomy():
    donor = make_case("donor")
    recipient = make_case("healthy", tumour=False, shape=(44, 40, 38))
    out, record = transplant_tumour(donor, recipient)
    _assert_valid(out)
    assert out.shape == recipient.shape and np.array_equal(out.brain, recipient.brain)
    assert np.array_equal(out.tissue, recipient.tissue)  # healthy recipient: nothing to refill
    assert np.count_nonzero(out.labels) == pytest.approx(np.count_nonzero(donor.labels), rel=0.1)
    assert out.source_subject == "donor" and out.anatomy_subject == "healthy"
    assert record.params["recipient_subject"] == "healthy"
    assert core_enclosed(out.labels, out.brain)


def test_transplant_replaces_the_recipients_tumour_and_resamples_voxel_size():
    donor = make_case("donor", voxel=(2.0, 2.0, 2.0))
    recipient = make_case("other", tumour_centre=(14, 16, 14), voxel=(1.0, 1.0, 1.0))
    out, record = transplant_tumour(donor, recipient)
    _assert_valid(out)
    assert record.params["recipient_had_tumour"]
    old = recipient.labels > 0
    assert not np.any(out.labels[old & ~(out.labels > 0)])
    # 2 mm voxels -> 1 mm voxels: the same tumour in mm has ~8x the voxels.
    n_out, n_in = np.count_nonzero(out.labels), np.count_nonzero(donor.labels)
    assert 6 * n_in < n_out <= 10 * n_in


def test_transplant_clips_the_tumour_to_a_smaller_brain():
    donor = make_case("donor")
    small = make_case("slab", tumour=False)
    small.brain = small.brain & (np.abs(np.indices(SHAPE)[0] - 20) < 4)  # 8 voxels thick
    small.tissue[~small.brain] = 0
    out, record = transplant_tumour(donor, small)  # the tumour is 14 voxels wide
    _assert_valid(out)
    assert record.params["voxels_clipped_at_brain"] > 0
    assert 0 < np.count_nonzero(out.labels) < np.count_nonzero(donor.labels)
    assert not np.any((out.labels > 0) & ~small.brain)


def test_fill_tissue_uses_the_nearest_healthy_label():
    tissue = np.zeros((10, 10, 10), np.uint8)
    brain = np.zeros_like(tissue, bool)
    brain[1:9, 1:9, 1:9] = True
    tissue[brain] = 3
    tissue[1:9, 1:3, 1:9] = 1
    holes = np.zeros_like(brain)
    holes[1:9, 3:5, 1:9] = True  # column 3 is next to CSF, column 4 next to WM
    filled = fill_tissue(tissue, brain, holes)
    assert np.all(filled[1:9, 3, 1:9] == 1) and np.all(filled[1:9, 4, 1:9] == 3)


def test_random_edits_are_deterministic_and_recorded():
    bank = [
        make_case("a"),
        make_case("b", tumour=False),
        make_case("c", tumour_centre=(18, 24, 16)),
    ]
    cfg = SynthesisConfig(
        p_transplant=1.0, p_scale=1.0, p_rotate=1.0, p_translate=1.0, p_remove=0.0
    )
    one = apply_random_edits(bank[0], InMemoryPool(bank), cfg, np.random.default_rng(7))
    two = apply_random_edits(bank[0], InMemoryPool(bank), cfg, np.random.default_rng(7))
    assert np.array_equal(one.labels, two.labels) and one.edits == two.edits
    assert [e["edit"] for e in one.edits] == ["transplant", "scale", "rotate", "translate"]
    _assert_valid(one)


def test_random_remove_yields_a_healthy_case():
    cfg = SynthesisConfig(p_remove=1.0)
    out = apply_random_edits(
        make_case(), InMemoryPool([make_case()]), cfg, np.random.default_rng(0)
    )
    assert not out.has_tumour and [e["edit"] for e in out.edits] == ["remove"]


def test_healthy_source_receives_a_tumour_by_transplant():
    bank = [make_case("h", tumour=False), make_case("t")]
    cfg = SynthesisConfig(
        p_transplant=1.0, p_scale=0.0, p_rotate=0.0, p_translate=0.0, p_remove=0.0
    )
    out = apply_random_edits(bank[0], InMemoryPool(bank), cfg, np.random.default_rng(0))
    assert out.has_tumour and out.anatomy_subject == "h" and out.source_subject == "t"
    _assert_valid(out)
