"""Reading real BraTS files: both namings, .nii and .nii.gz, RAS reorientation, labels."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from fixtures import brats_cases
from fixtures.brats_cases import CASE_2021, CASE_2023, FIXTURE_CASE, copy_2021, copy_2023

from fedsynth.common.data import brats
from fedsynth.common.data.validate import load_case
from fedsynth.common.errors import DataError
from fedsynth.common.io.nifti import load_volume, save_volume


def _stored(path):
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def test_fixture_case_loads_in_ras_with_internal_labels():
    case = brats.find_case(FIXTURE_CASE)
    assert case.naming is brats.BRATS2023 and not case.missing_modalities and case.seg
    loaded = load_case(case)
    assert loaded.case_id == CASE_2023
    assert set(loaded.images) == set(brats.MODALITIES)
    for image in loaded.images.values():
        assert image.dtype == np.float32 and image.shape == loaded.shape
    assert loaded.seg.dtype == np.uint8 and loaded.seg.shape == loaded.shape
    assert set(np.unique(loaded.seg)) == {0, 1, 2, 3}
    assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
    # The fixture is stored LPS: loading must flip the first two axes, data and affine alike.
    raw_seg, raw_affine = _stored(case.seg)
    assert nib.aff2axcodes(raw_affine) == ("L", "P", "S")
    np.testing.assert_array_equal(loaded.seg, raw_seg[::-1, ::-1, :].astype(np.uint8))
    corner = raw_affine @ [raw_seg.shape[0] - 1, raw_seg.shape[1] - 1, 0, 1]
    np.testing.assert_allclose(loaded.affine @ [0, 0, 0, 1], corner)
    raw_t1, _ = _stored(case.images["t1"])
    np.testing.assert_array_equal(loaded.images["t1"], raw_t1[::-1, ::-1, :].astype(np.float32))


def test_2021_naming_maps_enhancing_4_to_3(tmp_path):
    folder = copy_2021(tmp_path)
    case = brats.find_case(folder)
    assert case.naming is brats.BRATS2021 and case.case_id == CASE_2021
    on_disk, _ = _stored(case.seg)
    assert set(np.unique(on_disk)) == {0, 1, 2, 4}
    loaded_2021 = load_case(case)
    loaded_2023 = load_case(brats.find_case(FIXTURE_CASE))
    np.testing.assert_array_equal(loaded_2021.seg, loaded_2023.seg)
    for m in brats.MODALITIES:
        np.testing.assert_array_equal(loaded_2021.images[m], loaded_2023.images[m])
    np.testing.assert_allclose(loaded_2021.affine, loaded_2023.affine)


def test_uncompressed_and_mixed_extensions_load_the_same(tmp_path):
    folder = copy_2021(tmp_path / "nii", gz=False)
    assert all(p.name.endswith(".nii") for p in folder.iterdir())
    plain = load_case(brats.find_case(folder))
    gz = load_case(brats.find_case(copy_2021(tmp_path / "gz")))
    # Mixed: one modality uncompressed among gzipped ones.
    mixed_folder = copy_2023(tmp_path / "mixed")
    t2 = mixed_folder / f"{CASE_2023}-t2w.nii.gz"
    (mixed_folder / f"{CASE_2023}-t2w.nii").write_bytes(gzip.decompress(t2.read_bytes()))
    t2.unlink()
    mixed = load_case(brats.find_case(mixed_folder))
    for m in brats.MODALITIES:
        np.testing.assert_array_equal(plain.images[m], gz.images[m])
        np.testing.assert_array_equal(mixed.images[m], gz.images[m])
    np.testing.assert_array_equal(plain.seg, gz.seg)


def test_discover_cases_mixes_namings_and_flags_duplicates(tmp_path):
    copy_2021(tmp_path)
    folder = copy_2023(tmp_path)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "manifest.csv").write_text("subject,scanner_site,split\n")
    cases = brats.discover_cases(tmp_path)
    assert [(c.case_id, c.naming.name) for c in cases] == [
        (CASE_2023, "brats2023"),
        (CASE_2021, "brats2021"),
    ]
    assert all(not c.duplicates for c in cases)
    dup = folder / f"{CASE_2023}-t1n.nii"
    dup.write_bytes(gzip.decompress((folder / f"{CASE_2023}-t1n.nii.gz").read_bytes()))
    case = brats.find_case(folder)
    assert case.images["t1"] == dup and case.duplicates == [folder / f"{CASE_2023}-t1n.nii.gz"]


def test_discover_cases_rejects_missing_or_empty_cohort(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        brats.discover_cases(tmp_path / "nope")
    with pytest.raises(DataError, match="no subject folders"):
        brats.discover_cases(tmp_path)


def test_label_conversion_round_trips_between_namings():
    internal = np.array([0, 1, 2, 3, 3, 0], dtype=np.uint8)
    stored_2021 = brats.labels_for_naming(internal, brats.BRATS2021)
    np.testing.assert_array_equal(stored_2021, [0, 1, 2, 4, 4, 0])
    np.testing.assert_array_equal(
        brats.normalise_labels(stored_2021.astype(np.float32), brats.BRATS2021), internal
    )
    np.testing.assert_array_equal(brats.labels_for_naming(internal, brats.BRATS2023), internal)
    np.testing.assert_array_equal(brats.normalise_labels(internal, brats.BRATS2023), internal)
    assert internal[3] == 3  # labels_for_naming must not change its input


@pytest.mark.parametrize(
    ("name", "dtype"), [("v.nii.gz", np.float32), ("v.nii", np.int16), ("v.nii.gz", np.uint8)]
)
def test_save_volume_round_trip_is_exact_and_reproducible(tmp_path, name, dtype):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 200, size=(5, 6, 7)).astype(dtype)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 1.5]
    save_volume(tmp_path / name, array, affine, dtype)
    data, back = load_volume(tmp_path / name)
    assert data.dtype == dtype
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(back, affine)
    first = (tmp_path / name).read_bytes()
    save_volume(tmp_path / name, array, affine, dtype)
    assert (tmp_path / name).read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_rle_gzip_is_a_standard_gzip_file_every_reader_decodes(tmp_path):
    """``rle=True`` (the synthetic cohort's setting) writes an ordinary gzip member: the gzip
    module, nibabel and fedsynth's bounded reader all decode the same voxels; the bytes are
    reproducible; on a volume with a zero background the file is no larger than level 1's."""
    rng = np.random.default_rng(1)
    array = np.zeros((40, 48, 36), np.int16)
    array[8:32, 10:38, 6:30] = rng.integers(1, 1000, size=(24, 28, 24))
    rle, plain = tmp_path / "rle.nii.gz", tmp_path / "plain.nii.gz"
    save_volume(rle, array, np.eye(4), np.int16, compresslevel=1, rle=True)
    save_volume(plain, array, np.eye(4), np.int16, compresslevel=1)
    assert gzip.decompress(rle.read_bytes()) == gzip.decompress(plain.read_bytes())
    np.testing.assert_array_equal(np.asanyarray(nib.load(rle).dataobj), array)
    np.testing.assert_array_equal(load_volume(rle)[0], array)
    assert rle.stat().st_size <= plain.stat().st_size
    first = rle.read_bytes()
    save_volume(rle, array, np.eye(4), np.int16, compresslevel=1, rle=True)
    assert rle.read_bytes() == first


@pytest.mark.parametrize(
    ("array", "affine", "match"),
    [
        (np.zeros((4, 4, 4, 2)), np.eye(4), "4-D"),
        (np.full((4, 4, 4), np.nan), np.eye(4), "non-finite"),
        (np.full((4, 4, 4), 300.0), np.eye(4), "do not fit uint8"),
        (np.zeros((4, 4, 4)), np.eye(3), "affine"),
    ],
)
def test_save_volume_refuses_bad_input_and_writes_nothing(tmp_path, array, affine, match):
    target = tmp_path / "bad.nii.gz"
    dtype = np.uint8 if "uint8" in match else np.float32
    with pytest.raises(DataError, match=match) as err:
        save_volume(target, array, affine, dtype)
    assert "bad.nii.gz" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_save_volume_rounds_floats_for_integer_labels(tmp_path):
    save_volume(tmp_path / "s.nii.gz", np.full((2, 2, 2), 2.9999), np.eye(4), np.uint8)
    data, _ = load_volume(tmp_path / "s.nii.gz")
    assert data.dtype == np.uint8 and np.all(data == 3)


def test_full_shared_case_loads_and_validates():
    src = brats_cases.shared_case()
    if src is None:
        pytest.skip("the shared BraTS case (../shared/data/brats) is not on this machine")
    from fedsynth.common.data.validate import validate_case

    case = brats.find_case(src)
    assert validate_case(case) == []
    loaded = load_case(case)
    assert loaded.shape == (240, 240, 155)
    assert set(np.unique(loaded.seg)) == {0, 1, 2, 3}
    assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")


def test_make_fixture_reproduces_the_committed_fixture(tmp_path):
    src = brats_cases.shared_case()
    if src is None:
        pytest.skip("the shared BraTS case (../shared/data/brats) is not on this machine")
    from fixtures import make_fixture

    out = tmp_path / CASE_2023
    assert make_fixture.main(["--src", str(src), "--out", str(out)]) == 0
    committed = sorted(p.name for p in FIXTURE_CASE.iterdir())
    assert sorted(p.name for p in out.iterdir()) == committed
    for name in committed:
        assert (out / name).read_bytes() == (FIXTURE_CASE / name).read_bytes(), name
