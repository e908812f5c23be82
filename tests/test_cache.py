"""Slice caches (build, reuse, staleness) and what training reads from them."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.synthetic_brain import write_case

from fedsynth.common.config import PreprocessConfig
from fedsynth.common.data.cache import SliceCache, build_slices
from fedsynth.common.data.datasets import (
    PatientSampler,
    SliceDataset,
    condition_channels,
    fixed_eval_slices,
)
from fedsynth.common.errors import DataError

CFG = PreprocessConfig(image_size=32)
SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
SUBJECTS = ["p0", "p1", "p2", "h3"]  # h3 has no tumour


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    for i, s in enumerate(SUBJECTS):
        write_case(root, s, tumour=not s.startswith("h"), seed=i, with_tissue=(i == 1))
    return root


@pytest.fixture(scope="module")
def cache(cohort, tmp_path_factory):
    return build_slices(cohort, SUBJECTS, "site-0", CFG, tmp_path_factory.mktemp("cache"))


def _build(cohort, root, subjects=SUBJECTS, cfg=CFG, **kw):
    return build_slices(cohort, subjects, "site-0", cfg, root, **kw)


# --- the cache itself ----------------------------------------------------------------------


def test_cache_contents(cache, cohort):
    n = len(cache)
    assert cache.built and cache.patients == SUBJECTS
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert cache.images.shape == (n, 4, 32, 32) and cache.images.dtype == np.float32
    assert cache.labels.shape == cache.tissue.shape == (n, 32, 32)
    assert cache.labels.dtype == cache.tissue.dtype == np.uint8
    assert cache.patient.dtype == cache.z.dtype == np.int64 and cache.has_tumour.dtype == bool
    assert cache.images.min() >= -1 and cache.images.max() <= 1
    np.testing.assert_array_equal(cache.has_tumour, (cache.labels > 0).any(axis=(1, 2)))
    # patient ranges are contiguous, cover every slice, and agree with .patient
    assert cache.ranges[0, 0] == 0 and cache.ranges[-1, 1] == n
    np.testing.assert_array_equal(cache.ranges[1:, 0], cache.ranges[:-1, 1])
    for p, (a, b) in enumerate(cache.ranges):
        assert np.all(cache.patient[a:b] == p) and np.all(np.diff(cache.z[a:b]) > 0)
    assert not cache.has_tumour[slice(*cache.ranges[3])].any()  # the healthy subject
    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["n_slices"] == n and manifest["settings"]["preprocess"]["image_size"] == 32
    assert {os.path.dirname(os.path.dirname(s["path"])) for s in manifest["sources"]} == {
        str(cohort.resolve())
    }
    assert len(manifest["sources"]) == 4 * 5 + 1  # 4 images + seg each, one tissue file


def test_second_call_reuses(cohort, tmp_path):
    first = _build(cohort, tmp_path)
    stamp = (first.path / "images.npy").stat().st_mtime_ns
    second = _build(cohort, tmp_path)
    assert first.built and not second.built and second.path == first.path
    assert (second.path / "images.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.images, first.images)


def test_changed_setting_builds_a_new_cache(cohort, tmp_path):
    first = _build(cohort, tmp_path)
    other = _build(cohort, tmp_path, cfg=dataclasses.replace(CFG, min_brain_fraction=0.3))
    assert other.built and other.path != first.path and len(other) < len(first)
    assert not _build(cohort, tmp_path).built  # the first one is still there and current


def test_changed_source_file_rebuilds(tmp_path):
    cohort = tmp_path / "cohort"
    write_case(cohort, "a", seed=0)
    write_case(cohort, "b", seed=1)
    first = _build(cohort, tmp_path / "c", subjects=["a", "b"])
    before = np.array(first.images)
    write_case(cohort, "b", seed=5)  # same files, new noise (new mtime)
    t1 = cohort / "b" / "b_t1.nii.gz"
    st = t1.stat()
    os.utime(t1, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse clocks: force a change
    second = _build(cohort, tmp_path / "c", subjects=["a", "b"])
    assert second.built and second.path == first.path
    assert not np.array_equal(np.array(second.images), before)


def test_damaged_cache_is_rebuilt(cohort, tmp_path):
    first = _build(cohort, tmp_path)
    (first.path / "labels.npy").unlink()
    again = _build(cohort, tmp_path)
    assert again.built and len(again) == len(first)


def test_no_temporary_folders_left(cohort, tmp_path):
    _build(cohort, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [
        _build(cohort, tmp_path).path.name
    ]


def test_strict_and_lenient_validation(tmp_path):
    cohort = tmp_path / "cohort"
    write_case(cohort, "good")
    bad = write_case(cohort, "bad")
    (bad / "bad_flair.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="bad_flair.nii.gz"):
        _build(cohort, tmp_path / "c", subjects=["good", "bad"])
    lenient = _build(cohort, tmp_path / "c", subjects=["good", "bad"], strict=False)
    assert lenient.patients == ["good"] and "bad" in lenient.manifest["skipped"]


def test_missing_subject_and_empty_list(cohort, tmp_path):
    with pytest.raises(DataError, match="nobody.*no folder"):
        _build(cohort, tmp_path, subjects=["p0", "nobody"])
    with pytest.raises(DataError, match="no subjects"):
        _build(cohort, tmp_path, subjects=[])


# --- conditioning channels -----------------------------------------------------------------


def test_condition_channels_one_hot_and_tumour_overrides():
    tissue = np.array([[[0, 1], [2, 3]], [[3, 3], [2, 1]]], np.uint8)
    labels = np.array([[[0, 0], [0, 0]], [[1, 2], [3, 0]]], np.uint8)
    cond = condition_channels(tissue, labels)
    assert cond.shape == (2, 7, 2, 2) and cond.dtype == np.float32
    np.testing.assert_array_equal(cond.sum(axis=1), 1.0)
    np.testing.assert_array_equal(cond[0].argmax(axis=0), tissue[0])
    np.testing.assert_array_equal(cond[1].argmax(axis=0), [[4, 5], [6, 1]])  # tumour wins
    as_torch = condition_channels(torch.from_numpy(tissue), torch.from_numpy(labels))
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32
    np.testing.assert_array_equal(as_torch.numpy(), cond)


def test_condition_channels_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        condition_channels(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="0..3"):
        condition_channels(np.full((1, 2, 2), 4, np.uint8), np.zeros((1, 2, 2), np.uint8))


# --- patient sampling ----------------------------------------------------------------------


def test_sampler_one_slice_per_patient_and_inclusion_rate(cache):
    sampler = PatientSampler(cache, sample_rate=0.3, tumour_slice_prob=0.5, seed=0)
    rng = np.random.default_rng(1)
    draws = 3000
    included = np.zeros(len(cache.patients))
    sizes = []
    for _ in range(draws):
        idx = sampler.sample(rng)
        patients = cache.patient[idx]
        assert len(set(patients.tolist())) == len(patients)  # at most one slice per patient
        included[patients] += 1
        sizes.append(len(idx))
    rate = included / draws
    assert np.all(np.abs(rate - 0.3) < 0.04), rate  # 4 sigma ~ 0.033
    assert min(sizes) == 0  # Poisson sampling: empty batches happen
    assert abs(np.mean(sizes) - sampler.expected_batch_size) < 0.1


def test_sampler_tumour_preference(cache):
    rng = np.random.default_rng(2)
    tumour_patients = [0, 1, 2]

    def tumour_share(prob):
        s = PatientSampler(cache, 1.0, prob, seed=0)
        idx = np.concatenate([s.sample(rng) for _ in range(400)])
        idx = idx[np.isin(cache.patient[idx], tumour_patients)]
        return cache.has_tumour[idx].mean()

    assert tumour_share(1.0) == 1.0 and tumour_share(0.0) == 0.0
    assert abs(tumour_share(0.7) - 0.7) < 0.05
    # a healthy patient still gets a slice when a tumour slice is asked for
    healthy = PatientSampler(cache, 1.0, 1.0, seed=0).sample(rng)
    assert 3 in cache.patient[healthy]


def test_sampler_seed_and_batch(cache):
    a = PatientSampler(cache, 0.5, 0.7, seed=3)
    b = PatientSampler(cache, 0.5, 0.7, seed=3)
    for _ in range(5):
        np.testing.assert_array_equal(a.sample(), b.sample())
    idx = PatientSampler(cache, 1.0, 0.7, seed=0).sample()
    cond, images = a.batch(idx)
    assert cond.shape == (4, 7, 32, 32) and images.shape == (4, 4, 32, 32)
    assert cond.dtype == images.dtype == torch.float32
    empty_cond, empty_images = a.batch(np.array([], np.int64))
    assert empty_cond.shape == (0, 7, 32, 32) and empty_images.shape == (0, 4, 32, 32)
    with pytest.raises(ValueError, match="sample_rate"):
        PatientSampler(cache, 0.0, 0.5, seed=0)


# --- evaluation helpers --------------------------------------------------------------------


def test_slice_dataset(cache):
    ds = SliceDataset(cache)
    assert len(ds) == len(cache)
    cond, images, labels = ds[5]
    assert cond.shape == (7, 32, 32) and images.shape == (4, 32, 32) and labels.shape == (32, 32)
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(images.numpy(), cache.images[5])
    with pytest.raises(IndexError):
        SliceDataset(cache, np.array([len(cache)]))


def test_fixed_eval_slices(cache: SliceCache):
    picked = fixed_eval_slices(cache, 3, seed=0)
    assert len(picked) == 3 and len(set(cache.patient[picked].tolist())) == 3
    assert cache.has_tumour[picked].all()
    np.testing.assert_array_equal(picked, fixed_eval_slices(cache, 3, seed=0))
    everyone = fixed_eval_slices(cache, 10, seed=0)
    assert len(everyone) == 4 and not cache.has_tumour[everyone[-1]]  # healthy one comes last


# --- from a config, and the CLI ------------------------------------------------------------


def test_site_slices_and_preprocess_command(tmp_path, capsys):
    from fedsynth import cli
    from fedsynth.common.config import load_config
    from fedsynth.common.data.cache import site_slices
    from fedsynth.common.data.cohort import load_split, resolve_cohort

    cohort = tmp_path / "cohort"
    for i in range(5):
        write_case(cohort, f"s{i}", tumour=i != 4, seed=i, with_tissue=True)
    overrides = [
        "data.source=cohort",
        f"data.cohort_dir={cohort}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "preprocess.image_size=32",
        "split.policy=iid",
        "split.sites=2",
    ]
    assert cli.main(["preprocess", SMOKE, *overrides]) == 0
    first = capsys.readouterr().out
    assert first.count("[built]") == 3 and "site-1" in first
    assert cli.main(["preprocess", SMOKE, *overrides]) == 0
    assert capsys.readouterr().out.count("[reused]") == 3
    cfg = load_config(SMOKE, overrides)
    split = load_split(resolve_cohort(cfg))
    cache = site_slices(cfg, split.sites["site-0"], "site-0")
    assert not cache.built and cache.patients == split.sites["site-0"]
    assert str(cache.path).startswith(str(tmp_path / "cache" / "slices"))
