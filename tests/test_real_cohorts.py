"""Real BraTS data as hospitals hold it: damaged copies of the real fixture case.

Normalised copies with a non-zero background, BraTS 2012-2016 label maps, the Decathlon
layout, folders pointed at by mistake, and preprocessing that must not write into the data
folder. Every file here is a copy of tests/fixtures (in tmp dirs), changed the way real copies
are changed.
"""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fixtures.brats_cases import CASE_2021, CASE_2023, FIXTURE_CASE, copy_2021, copy_2023, copy_msd

from fedsynth import cli
from fedsynth.common.config import PreprocessConfig
from fedsynth.common.data import brats
from fedsynth.common.data.cache import build_slices
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.data.preprocess import brain_mask, preprocess_case
from fedsynth.common.data.validate import load_case, validate_case
from fedsynth.common.errors import DataError

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _rewrite_images(folder: Path, change) -> None:
    """Replace every image of a case (as stored, float32) by ``change(data)``."""
    case = brats.find_case(folder)
    for path in case.images.values():
        img = nib.load(path)
        data = change(np.asanyarray(img.dataobj).astype(np.float32))
        path.unlink()
        nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine), path)


def _zscore(data: np.ndarray) -> np.ndarray:
    """Z-scored over the brain, applied to the whole volume: background becomes -mean/std."""
    brain = data[data != 0]
    return (data - brain.mean()) / brain.std()


# --- intensities ------------------------------------------------------------------------


def test_zscored_copy_gets_the_same_brain_mask_as_the_original(tmp_path):
    original = load_case(brats.find_case(FIXTURE_CASE))
    folder = copy_2023(tmp_path)
    _rewrite_images(folder, _zscore)
    zscored = load_case(brats.find_case(folder))
    assert all(v < -0.1 for v in zscored.background.values())  # found, not assumed 0
    expected = brain_mask(original.images, original.seg)
    got = brain_mask(zscored.images, zscored.seg, zscored.background)
    assert got.mean() < 0.6  # not the whole field of view
    np.testing.assert_array_equal(got, expected)
    cfg = PreprocessConfig(image_size=32)
    a, b = preprocess_case(original, cfg), preprocess_case(zscored, cfg)
    np.testing.assert_array_equal(a.z, b.z)  # the same slices kept: no blank ones
    np.testing.assert_array_equal(a.labels, b.labels)
    assert np.all((b.tissue == 0) == (a.tissue == 0))  # background is not CSF


def test_image_without_a_constant_background_is_refused(tmp_path):
    folder = copy_2023(tmp_path)
    rng = np.random.default_rng(0)
    _rewrite_images(folder, lambda d: d + rng.normal(0, 5, d.shape))  # not skull-stripped-like
    problems = [str(p) for p in validate_case(brats.find_case(folder))]
    assert len(problems) == 4 and all("no constant background" in p for p in problems)
    assert "skull-strip" in problems[0]


# --- BraTS 2012-2016 labels -------------------------------------------------------------


def _brats2015_copy(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The fixture in 2021 naming with 2012-2016 labels: some core voxels 3 (non-enhancing)."""
    folder = copy_2021(tmp_path)
    path = folder / f"{CASE_2021}_seg.nii.gz"
    img = nib.load(path)
    stored = np.asanyarray(img.dataobj).copy()
    core = np.argwhere(stored == 1)
    stored[tuple(core[: len(core) // 2].T)] = 3
    path.unlink()
    nib.save(nib.Nifti1Image(stored, img.affine), path)
    return folder, stored


def test_brats2015_labels_need_the_explicit_option_and_merge_3_into_1(tmp_path):
    folder, stored = _brats2015_copy(tmp_path)
    assert set(np.unique(stored)) == {0, 1, 2, 3, 4}
    (problem,) = validate_case(brats.find_case(folder))
    assert "data.labels=brats2015" in problem.message and "merges 3 into" in problem.message
    assert "relabel" not in problem.message  # the old circular hint
    loaded = load_case(brats.find_case(folder, labels="brats2015"))
    reference = load_case(brats.find_case(FIXTURE_CASE)).seg
    np.testing.assert_array_equal(loaded.seg, reference)  # 3 -> 1 (core), 4 -> 3 (enhancing)


def test_validate_data_cli_takes_the_label_convention(tmp_path, capsys):
    _brats2015_copy(tmp_path)
    assert cli.main(["validate-data", str(tmp_path)]) == 1
    assert cli.main(["validate-data", str(tmp_path), "--labels", "brats2015"]) == 0


# --- the Decathlon layout ---------------------------------------------------------------


def test_decathlon_layout_maps_channels_and_labels(tmp_path):
    root = copy_msd(tmp_path / "Task01_BrainTumour")
    (case,) = brats.discover_cases(root)  # the tarball's ._ files are not cases
    assert case.case_id == "BRATS_001" and case.naming is brats.MSD
    loaded = load_case(case)
    reference = load_case(brats.find_case(FIXTURE_CASE))
    for m in brats.MODALITIES:
        np.testing.assert_array_equal(loaded.images[m], reference.images[m])
    np.testing.assert_array_equal(loaded.seg, reference.seg)  # 1 oedema -> 2, 2 NET -> 1
    np.testing.assert_allclose(loaded.affine, reference.affine)


def test_decathlon_cohort_splits_and_preprocesses(tmp_path):
    root = copy_msd(tmp_path / "Task01_BrainTumour", ids=("BRATS_001", "BRATS_002", "BRATS_003"))
    cfg = _cohort_config(
        tmp_path, root, "split.policy=iid", "split.sites=1", "split.test_fraction=0.34"
    )
    view = resolve_cohort(cfg)
    split = load_split(view)
    assert sorted(split.test + split.sites["site-0"]) == ["BRATS_001", "BRATS_002", "BRATS_003"]
    cache = build_slices(view, split.sites["site-0"], "site-0", cfg.preprocess, tmp_path / "slices")
    assert len(cache.patients) == 2 and len(cache) > 0 and cache.labels.max() == 3


def test_decathlon_labels_that_differ_from_task01_are_refused(tmp_path):
    root = copy_msd(tmp_path / "Task01_BrainTumour")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["1"] = "necrosis"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="dataset.json: label 1 is 'necrosis'"):
        brats.discover_cases(root)


# --- folders pointed at by mistake ------------------------------------------------------


def test_a_case_folder_is_explained_and_validate_data_accepts_it(tmp_path, capsys):
    folder = copy_2023(tmp_path)
    with pytest.raises(DataError, match=f"one case's folder.*parent {tmp_path}"):
        brats.discover_cases(folder)
    assert cli.main(["validate-data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "is one case's folder" in out and f"OK    {CASE_2023}" in out


def test_folder_without_recognised_cases_names_what_it_saw(tmp_path):
    for i in range(2):
        (tmp_path / f"patient{i}").mkdir()
        shutil.copy(next(FIXTURE_CASE.glob("*t1n.nii.gz")), tmp_path / f"patient{i}" / "T1.nii.gz")
    with pytest.raises(DataError) as err:
        brats.discover_cases(tmp_path)
    message = str(err.value)
    assert "no recognisable case" in message and "patient0/T1.nii.gz" in message
    assert "BraTS 2023 <cohort>/<id>/<id>-t1n.nii.gz" in message and "Decathlon" in message


# --- preprocess leaves the data folder alone ---------------------------------------------


def _cohort_config(tmp_path: Path, root: Path, *overrides: str):
    from fedsynth.common.config import load_config

    return load_config(
        SMOKE,
        [
            "data.source=cohort",
            f"data.cohort_dir={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
    )


def _three_case_cohort(root: Path) -> Path:
    for k in range(3):
        folder = copy_2023(root / "tmp")
        new_id = f"BraTS-GLI-0000{k}-000"
        (root / new_id).mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            f.rename(root / new_id / f.name.replace(CASE_2023, new_id))
        shutil.rmtree(root / "tmp")
    return root


def test_preprocess_writes_nothing_into_the_data_folder_and_lists_skipped(tmp_path, capsys):
    root = _three_case_cohort(tmp_path / "cohort")
    bad = root / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-seg.nii.gz"
    bad.write_bytes(bad.read_bytes()[:-30])  # a truncated label map
    before = {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}
    args = [
        "preprocess", str(SMOKE), "data.source=cohort", f"data.cohort_dir={root}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.strict=false", "split.policy=iid",
        "split.sites=1", "split.test_fraction=0.5",
    ]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "skipped 1 invalid case" in out and "BraTS-GLI-00002-000: " in out and "truncated" in out
    assert {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} == before
    strict = [a for a in args if a != "data.strict=false"]
    assert cli.main(strict) == 2
    assert "1 of 3 cases failed validation" in capsys.readouterr().err


def test_skipped_cases_reach_the_run_directory_and_the_report(tmp_path):
    from fedsynth.central import train_central
    from fedsynth.report.sections import sites_section

    root = _three_case_cohort(tmp_path / "cohort")
    bad = root / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2f.nii.gz"
    bad.write_bytes(bad.read_bytes()[:-30])
    cfg = _cohort_config(
        tmp_path, root, "data.strict=false", "split.policy=iid", "split.sites=1",
        "split.test_fraction=0.5", "train.steps=2", "train.batch_size=1", "privacy.enabled=false",
        "train.device=cpu",
    )  # fmt: skip
    run = train_central(cfg, tmp_path / "run", progress=False)
    record = json.loads((run.root / "skipped_cases.json").read_text())
    assert list(record["skipped"]) == ["BraTS-GLI-00001-000"]
    assert "t2f.nii.gz" in record["skipped"]["BraTS-GLI-00001-000"][0]
    section = sites_section(run.root)
    assert section.present and "1 invalid case(s) skipped" in section.body
    assert "BraTS-GLI-00001-000" in section.body and "truncated" in section.body
