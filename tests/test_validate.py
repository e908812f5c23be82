"""Validation of real cohorts: every kind of bad file gets one line naming the file."""

import gzip
import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
from fixtures.brats_cases import CASE_2021, CASE_2023, copy_2021, copy_2023

from fedsynth import cli
from fedsynth.common.data import brats
from fedsynth.common.data.validate import check_cohort, load_case, validate_case, validate_cohort
from fedsynth.common.errors import DataError

T1, T1C, T2, FLAIR, SEG = (f"{CASE_2023}-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg"))


@pytest.fixture
def case_dir(tmp_path):
    """A private copy of the 2023-named fixture case, free to corrupt."""
    return copy_2023(tmp_path / "cohort")


def _problems(folder, labels_optional=False):
    return [str(p) for p in validate_case(brats.find_case(folder), labels_optional)]


def _only_problem(folder, name, *phrases):
    """Exactly one problem, naming file ``name`` and containing every phrase."""
    problems = _problems(folder)
    assert len(problems) == 1, problems
    assert str(folder / name) in problems[0], problems
    for phrase in phrases:
        assert phrase in problems[0], problems
    return problems[0]


def _rewrite(path, change):
    """Replace a file's voxels (and optionally affine) as stored, bypassing fedsynth's writer."""
    img = nib.load(path)
    data, affine = change(np.asanyarray(img.dataobj).copy(), img.affine.copy())
    out = nib.Nifti1Image(data, affine)
    path.unlink()
    nib.save(out, path)


def test_fixture_cases_of_both_namings_are_valid(tmp_path):
    copy_2023(tmp_path)
    copy_2021(tmp_path)
    report = validate_cohort(tmp_path)
    assert report.ok and report.problems == []
    assert [c.case_id for c in report.valid_cases] == [CASE_2023, CASE_2021]
    assert [c.naming for c in report.cases] == ["brats2023", "brats2021"]


def test_truncated_gzip_is_caught_at_validation(case_dir):
    path = case_dir / T1C
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _only_problem(case_dir, T1C, "truncated")
    with pytest.raises(DataError, match="truncated") as err:
        load_case(brats.find_case(case_dir))
    assert err.value.path == path


def test_gzip_missing_only_its_trailer_is_caught(case_dir):
    # nibabel alone reads the voxels without reaching the end of the stream; we must not.
    path = case_dir / FLAIR
    path.write_bytes(path.read_bytes()[:-4])
    _only_problem(case_dir, FLAIR, "truncated")


def test_truncated_uncompressed_nii_is_caught(case_dir):
    gz = case_dir / T2
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    (case_dir / f"{CASE_2023}-t2w.nii").write_bytes(raw[: len(raw) // 2])
    _only_problem(case_dir, f"{CASE_2023}-t2w.nii", "truncated", "holds only")


def test_file_that_is_not_nifti(case_dir):
    (case_dir / T1).write_text("this is not an image\n")
    _only_problem(case_dir, T1, "not a NIfTI file")


def test_missing_modality_names_the_expected_file(case_dir):
    (case_dir / FLAIR).unlink()
    _only_problem(case_dir, FLAIR, "missing FLAIR image")


def test_missing_label_map_is_an_error_unless_labels_are_optional(case_dir):
    (case_dir / SEG).unlink()
    _only_problem(case_dir, SEG, "missing label map")
    assert _problems(case_dir, labels_optional=True) == []
    loaded = load_case(brats.find_case(case_dir), labels_optional=True)
    assert loaded.seg is None and set(loaded.images) == set(brats.MODALITIES)


def test_four_d_volume(case_dir):
    _rewrite(case_dir / T2, lambda d, a: (np.stack([d, d], axis=-1), a))
    _only_problem(case_dir, T2, "4-D volume")


def test_two_d_volume(case_dir):
    _rewrite(case_dir / T2, lambda d, a: (d[:, :, 10], a))
    _only_problem(case_dir, T2, "2-D volume", "expected one 3-D")


def test_shape_disagreement_between_modalities(case_dir):
    _rewrite(case_dir / T1C, lambda d, a: (d[:, :, :-1], a))
    _only_problem(case_dir, T1C, "shape", T1)


def test_affine_disagreement_beyond_tolerance(case_dir):
    def shift(by):
        def change(d, a):
            a[0, 3] += by
            return d, a

        return change

    _rewrite(case_dir / T2, shift(1e-5))  # float rounding: tolerated
    assert _problems(case_dir) == []
    _rewrite(case_dir / T2, shift(0.01))
    _only_problem(case_dir, T2, "affine differs", T1)


def test_co_registered_files_stored_in_different_orientations_agree(case_dir):
    # Store T1 in RAS instead of LPS: same voxels in the world, so still valid after reorientation.
    def to_ras(d, a):
        flipped = d[::-1, ::-1, :].copy()
        shift = np.diag([-1.0, -1.0, 1.0, 1.0])
        shift[:2, 3] = [d.shape[0] - 1, d.shape[1] - 1]
        return flipped, a @ shift

    _rewrite(case_dir / T1, to_ras)
    assert nib.aff2axcodes(nib.load(case_dir / T1).affine) == ("R", "A", "S")
    assert _problems(case_dir) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(case_dir, bad):
    def poison(d, a):
        d = d.astype(np.float32)
        d[3, 4, 5] = bad
        return d, a

    _rewrite(case_dir / FLAIR, poison)
    _only_problem(case_dir, FLAIR, "1 of", "NaN or infinite")


def test_non_finite_labels(case_dir):
    def poison(d, a):
        d[0, 0, 0] = np.nan
        return d, a

    _rewrite(case_dir / SEG, poison)
    _only_problem(case_dir, SEG, "NaN or infinite")


@pytest.mark.parametrize(
    ("value", "phrase"), [(0.0, "every voxel is 0"), (100.0, "every voxel is 100")]
)
def test_empty_or_constant_image(case_dir, value, phrase):
    _rewrite(case_dir / T1C, lambda d, a: (np.full_like(d, value), a))
    _only_problem(case_dir, T1C, "constant", phrase, "no brain")


def test_2023_label_file_with_enhancing_as_4(case_dir):
    _rewrite(case_dir / SEG, lambda d, a: (np.where(d == 3, 4, d).astype(np.float32), a))
    _only_problem(
        case_dir, SEG, "label values {4}", "BraTS 2023", "{0, 1, 2, 3}", "2017-2021 naming"
    )


def test_2021_label_file_with_enhancing_as_3(tmp_path):
    folder = copy_2021(tmp_path)
    seg = folder / f"{CASE_2021}_seg.nii.gz"
    _rewrite(seg, lambda d, a: (np.where(d == 4, 3, d).astype(np.uint8), a))
    _only_problem(
        folder, seg.name, "label values {3}", "BraTS 2017-2021", "{0, 1, 2, 4}", "2023 naming"
    )


def test_non_integer_and_out_of_range_labels(case_dir):
    def smear(d, a):
        d[0, 0, 0], d[0, 0, 1] = 1.5, 7.0
        return d, a

    _rewrite(case_dir / SEG, smear)
    problems = _problems(case_dir)
    assert len(problems) == 2 and all(str(case_dir / SEG) in p for p in problems)
    assert "non-integer values (e.g. 1.5)" in problems[0]
    assert "label values {7} are outside" in problems[1]  # 1.5 rounds to 2: only reported once


def test_tissue_map_is_checked_when_present(case_dir):
    tissue = case_dir / f"{CASE_2023}-tissue.nii.gz"
    img = nib.load(case_dir / SEG)
    values = np.zeros(img.shape, dtype=np.uint8)
    values[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(values, img.affine), tissue)
    _only_problem(case_dir, tissue.name, "tissue map", "{9}")
    values[0, 0, 0] = 3
    tissue.unlink()
    nib.save(nib.Nifti1Image(values, img.affine), tissue)
    assert _problems(case_dir) == []
    assert load_case(brats.find_case(case_dir)).tissue.max() == 3


def test_duplicate_nii_and_nii_gz(case_dir):
    (case_dir / f"{CASE_2023}-t2w.nii").write_bytes(gzip.decompress((case_dir / T2).read_bytes()))
    _only_problem(case_dir, T2, "duplicate file")


def test_every_problem_of_a_case_is_listed(case_dir):
    (case_dir / FLAIR).unlink()
    (case_dir / T1C).write_bytes(b"")
    _rewrite(case_dir / SEG, lambda d, a: (d + 10, a))
    problems = _problems(case_dir)
    assert len(problems) == 3, problems
    assert [p.split(": ")[0] for p in problems] == [str(case_dir / n) for n in (FLAIR, T1C, SEG)]


def _bad_cohort(tmp_path):
    root = tmp_path / "cohort"
    copy_2021(root)
    bad = copy_2023(root)
    (bad / FLAIR).unlink()
    return root, bad


def test_check_cohort_strict_raises_listing_every_problem(tmp_path):
    root, bad = _bad_cohort(tmp_path)
    (bad / T2).write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError) as err:
        check_cohort(root, strict=True, labels_optional=False)
    message = str(err.value)
    assert "1 of 2 cases failed" in message
    assert str(bad / FLAIR) in message and str(bad / T2) in message
    assert "data.strict=false" in message


def test_check_cohort_skips_invalid_cases_with_a_warning(tmp_path, caplog):
    root, bad = _bad_cohort(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fedsynth.common.data.validate"):
        cases = check_cohort(root, strict=False, labels_optional=False).valid_cases
    assert [c.case_id for c in cases] == [CASE_2021]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and CASE_2023 in warnings[0] and str(bad / FLAIR) in warnings[0]


def test_check_cohort_without_any_valid_case_is_an_error(tmp_path):
    root, _ = _bad_cohort(tmp_path)
    shutil.rmtree(root / CASE_2021)
    with pytest.raises(DataError, match="none of the 1 cases is valid"):
        check_cohort(root, strict=False, labels_optional=False)


def test_cli_reports_valid_cohort_and_exits_0(tmp_path, capsys):
    copy_2023(tmp_path)
    copy_2021(tmp_path)
    assert cli.main(["validate-data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"OK    {CASE_2023}  (brats2023)" in out and f"OK    {CASE_2021}  (brats2021)" in out
    assert "Summary: 2 of 2 cases valid, 0 invalid (0 problems)" in out


def test_cli_reports_each_problem_exits_1_and_writes_json(tmp_path, capsys):
    root, bad = _bad_cohort(tmp_path)
    report = tmp_path / "out" / "report.json"
    assert cli.main(["validate-data", str(root), "--json", str(report)]) == 1
    lines = capsys.readouterr().out.splitlines()
    fail = lines.index(f"FAIL  {CASE_2023}  (brats2023)")
    assert lines[fail + 1].startswith("      ") and str(bad / FLAIR) in lines[fail + 1]
    assert f"OK    {CASE_2021}  (brats2021)" in lines
    assert "Summary: 1 of 2 cases valid, 1 invalid (1 problems)" in lines
    data = json.loads(report.read_text())
    assert data["ok"] is False and data["cases_valid"] == 1
    [failed] = [c for c in data["cases"] if not c["ok"]]
    assert failed["problems"] == [
        {
            "path": str(bad / FLAIR),
            "message": "missing FLAIR image (no .nii or .nii.gz file of this name)",
        }
    ]


def test_cli_labels_optional(tmp_path, capsys):
    case = copy_2023(tmp_path)
    (case / SEG).unlink()
    assert cli.main(["validate-data", str(tmp_path)]) == 1
    assert cli.main(["validate-data", str(tmp_path), "--labels-optional"]) == 0
    assert "missing label map" in capsys.readouterr().out


def test_cli_unusable_folder_exits_2(tmp_path, capsys):
    assert cli.main(["validate-data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["validate-data", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for phrase in ("--labels-optional", "--json", "BraTS 2023", "Exit status"):
        assert phrase in out
