"""Label bank: atlas cases (no patient data) and cohort cases, with provenance."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.synthetic_brain import write_case

from fedsynth.common.config import SynthesisConfig, load_config
from fedsynth.common.errors import DataError
from fedsynth.synthesis.label_bank import (
    atlas_bank,
    build_label_bank,
    cohort_bank,
    source_order,
    synthetic_label_cases,
)

VOXEL = 6.0  # mm: the coarsest atlas grid the template allows quickly; ~30^3 voxels


@pytest.fixture(scope="module")
def atlas():
    return atlas_bank(4, VOXEL, seed=3, healthy_fraction=0.25)


def test_atlas_bank_is_valid_and_touches_no_patient(atlas):
    assert len(atlas) == 4 and sum(atlas.tumour) == 3
    for i in range(len(atlas)):
        case = atlas.load(i)
        assert case.problems() == []
        assert case.has_tumour == atlas.tumour[i]
        assert case.source == "atlas" and case.source_subject == "atlas"
        np.testing.assert_allclose(case.voxel_size, VOXEL)
        # Every tissue class is present: real anatomy, not a blob.
        assert set(np.unique(case.tissue[case.brain]).tolist()) == {1, 2, 3}
    assert atlas.description["source"] == "atlas"


@pytest.mark.parametrize("voxel", [VOXEL, 2.0])
def test_fast_anatomy_sampler_matches_scipy_inside_the_template(voxel):
    # The atlas bank samples the deformed template with torch's grid_sample instead of
    # scipy's map_coordinates: the same trilinear values except in the one-voxel band at the
    # edge of the template's box, and (nearly) the same tissue labels.
    from fedsynth.common.data import phantom_anatomy as pa

    template = pa.load_template(voxel)
    coords = pa.subject_coordinates(np.random.default_rng(7), template)
    want = pa.sample_anatomy(template, coords)
    got = pa.sample_anatomy_fast(template, coords)
    assert got.shape == want.shape and got.dtype == np.float32
    vox = np.einsum("ij,j...->i...", template.world_to_vox[:3, :3], coords) + template.world_to_vox[
        :3, 3
    ].reshape(3, 1, 1, 1)
    inside = np.all(
        [(vox[k] >= 1) & (vox[k] <= template.maps.shape[k + 1] - 2) for k in range(3)], axis=0
    )
    assert inside.mean() > 0.5
    assert np.abs(got - want)[:, inside].max() < 1e-4

    def tissue(a):
        return np.where(a.sum(0) > 0.5, a.argmax(0) + 1, 0)

    assert (tissue(got) != tissue(want)).mean() < 1e-3


def test_atlas_cases_are_deterministic_and_differ_between_cases(atlas):
    again = atlas_bank(4, VOXEL, seed=3, healthy_fraction=0.25)
    a, b = atlas.load(0), again.load(0)
    assert np.array_equal(a.tissue, b.tissue) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(atlas.load(0).tissue, atlas.load(2).tissue)  # deformed per case


def test_tissue_classes_are_argmax_plus_one_ties_included():
    from fedsynth.synthesis.label_bank import tissue_classes

    rng = np.random.default_rng(0)
    anatomy = rng.choice([0.0, 0.25, 0.5], size=(3, 6, 7, 8)).astype(np.float32)  # many ties
    anatomy[:, 0, 0, :3] = [[0.5, 0.5, 0.1], [0.5, 0.1, 0.5], [0.1, 0.5, 0.5]]
    brain = rng.random((6, 7, 8)) > 0.3
    want = np.where(brain, anatomy.argmax(0) + 1, 0).astype(np.uint8)
    got = tissue_classes(anatomy, brain)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def _same_case(a, b) -> None:
    for name in ("tissue", "labels", "brain", "affine"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.case_id, a.source, a.source_subject, a.anatomy_subject, a.edits) == (
        b.case_id, b.source, b.source_subject, b.anatomy_subject, b.edits,
    )  # fmt: skip


def test_cached_atlas_cases_equal_built_ones_and_later_banks_read_them(
    atlas, tmp_path, monkeypatch
):
    """A bank with a cache folder stores each case it builds; a later bank with the same
    settings reads them (the builder is not called) and gets exactly the same cases."""
    from fedsynth.synthesis import label_bank

    first = atlas_bank(4, VOXEL, seed=3, healthy_fraction=0.25, cache_dir=tmp_path)
    for i in range(4):
        _same_case(first.load(i), atlas.load(i))
    stored = sorted((tmp_path / label_bank.ATLAS_CACHE).glob("*.npz"))
    assert len(stored) == 4

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached atlas case")

    monkeypatch.setattr(label_bank, "atlas_case", no_build)
    again = atlas_bank(4, VOXEL, seed=3, healthy_fraction=0.25, cache_dir=tmp_path)
    for i in range(4):
        _same_case(again.load(i), atlas.load(i))
    with pytest.raises(AssertionError, match="rebuilt"):  # other settings: other cases
        atlas_bank(4, VOXEL, seed=4, healthy_fraction=0.25, cache_dir=tmp_path).load(0)
    monkeypatch.setattr(label_bank, "ATLAS_VERSION", label_bank.ATLAS_VERSION + 1)
    with pytest.raises(AssertionError, match="rebuilt"):  # changed atlas code: rebuilt
        atlas_bank(4, VOXEL, seed=3, healthy_fraction=0.25, cache_dir=tmp_path).load(0)


def test_a_damaged_cached_atlas_case_is_rebuilt(atlas, tmp_path):
    from fedsynth.synthesis import label_bank

    atlas_bank(4, VOXEL, seed=3, healthy_fraction=0.25, cache_dir=tmp_path).load(1)
    (path,) = (tmp_path / label_bank.ATLAS_CACHE).glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])  # cut short
    _same_case(atlas_bank(4, VOXEL, 3, 0.25, cache_dir=tmp_path).load(1), atlas.load(1))
    with np.load(path) as z:  # stored again, whole
        np.testing.assert_array_equal(z["labels"], atlas.load(1).labels)
    bad = atlas.load(1).tissue.copy()
    bad[bad == 0] = 7  # not an atlas case's tissue map
    np.savez_compressed(path, tissue=bad, labels=atlas.load(1).labels, affine=np.eye(4))
    _same_case(atlas_bank(4, VOXEL, 3, 0.25, cache_dir=tmp_path).load(1), atlas.load(1))


def test_synthetic_cases_carry_provenance_and_stay_valid(atlas):
    cfg = SynthesisConfig(
        p_transplant=0.5, p_scale=1.0, p_rotate=0.5, p_translate=1.0, p_remove=0.0, seed=1
    )
    cases = list(synthetic_label_cases(atlas, 6, cfg))
    assert [i for i, _ in cases] == list(range(6))
    for _, case in cases:
        assert case.problems() == []
        prov = case.provenance()
        assert prov["source"] == "atlas" and prov["source_subject"] == "atlas"
        assert prov["bank_case"] in atlas.ids
        assert any(e["edit"] == "scale" for e in prov["edits"])  # p_scale = 1
    # Same seed: same cases, whatever was drawn before.
    again = dict(synthetic_label_cases(atlas, 6, cfg))
    for i, case in cases:
        assert np.array_equal(case.labels, again[i].labels) and case.edits == again[i].edits


def test_source_order_cycles_through_every_tumour_case(atlas):
    order = source_order(atlas, 9, seed=0)
    tumour_idx = set(np.flatnonzero(atlas.tumour).tolist())
    assert set(order[:3].tolist()) == tumour_idx  # one full pass before any repeat
    assert set(order.tolist()) <= tumour_idx


def test_cohort_bank_reads_labels_and_tissue(tmp_path):
    write_case(tmp_path, "p1", tumour=True, with_tissue=True)
    write_case(tmp_path, "p2", tumour=False, seed=1)  # no tissue file: computed
    bank = cohort_bank(tmp_path)
    assert bank.ids == ["p1", "p2"] and bank.tumour == [True, False]
    p1, p2 = bank.load(0), bank.load(1)
    for case in (p1, p2):
        assert case.problems() == []
        assert case.source == "cohort" and case.anatomy_subject == case.case_id
    assert set(np.unique(p1.labels).tolist()) == {0, 1, 2, 3}  # stored 4 read back as 3
    assert set(np.unique(p2.tissue[p2.brain]).tolist()) == {1, 2, 3}
    assert bank.description["subjects"] == ["p1", "p2"]


def test_cohort_transplant_onto_healthy_subject_records_both(tmp_path):
    write_case(tmp_path, "p1", tumour=True, with_tissue=True)
    write_case(tmp_path, "p2", tumour=False, with_tissue=True, seed=1)
    bank = cohort_bank(tmp_path)
    cfg = SynthesisConfig(
        p_transplant=1.0, p_healthy_recipient=1.0, p_scale=0, p_rotate=0, p_translate=0, p_remove=0
    )
    ((_, case),) = synthetic_label_cases(bank, 1, cfg)
    assert case.source_subject == "p1" and case.anatomy_subject == "p2"
    assert case.edits[0]["edit"] == "transplant" and case.edits[0]["recipient_subject"] == "p2"
    assert case.problems() == [] and case.has_tumour


def test_cohort_bank_subset_and_errors(tmp_path):
    write_case(tmp_path, "p1", tumour=True, with_tissue=True)
    write_case(tmp_path, "p2", tumour=False, with_tissue=True)
    assert cohort_bank(tmp_path, subjects=["p1"]).ids == ["p1"]
    with pytest.raises(DataError, match="not in the cohort"):
        cohort_bank(tmp_path, subjects=["nobody"])
    with pytest.raises(DataError, match="no subject has a tumour"):
        cohort_bank(tmp_path, subjects=["p2"])
    with pytest.raises(DataError, match="does not exist"):
        cohort_bank(tmp_path / "missing")


def test_build_label_bank_follows_the_config(tmp_path):
    write_case(tmp_path, "p1", tumour=True, with_tissue=True)
    cfg = load_config(None, ["synthesis.label_source=cohort", f"synthesis.cohort_dir={tmp_path}"])
    assert build_label_bank(cfg).source == "cohort"
    cfg = load_config(None, ["synthesis.atlas_anatomies=2", f"synthesis.atlas_voxel_size={VOXEL}"])
    bank = build_label_bank(cfg)
    assert bank.source == "atlas" and len(bank) == 2
