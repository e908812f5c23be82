"""NIfTI input and output: whole-file reads that fail early, RAS reorientation, atomic writes.

Reading decompresses and parses the *whole* file up front, so a truncated or corrupted
``.nii.gz`` fails here, at validation, with a message naming the file, instead of halfway
through preprocessing or training. Every volume is reoriented to the closest RAS canonical
orientation (``nibabel.as_closest_canonical``), so axis 0 runs right-ward, 1 anterior-ward and
2 superior-ward whatever the scanner wrote.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsynth.common.data.brats import CaseFiles
from fedsynth.common.errors import DataError
from fedsynth.common.io.atomic import atomic_write_bytes

_NIFTI1_HEADER, _NIFTI2_HEADER = 348, 540  # the sizeof_hdr field that starts each format


@dataclass
class LoadedCase:
    """One subject in memory, RAS canonical, all volumes on the same (X, Y, Z) grid.

    images: modality key (t1, t1c, t2, flair) -> float32 (X, Y, Z), scanner intensities.
    seg: uint8 (X, Y, Z) tumour labels in the internal convention 0..3, or None when the case
        has no label map (only where labels are optional).
    tissue: uint8 (X, Y, Z) 0 bg, 1 CSF, 2 GM, 3 WM, or None when the case has no tissue map.
    affine: float64 (4, 4) voxel -> world (mm) of every volume above.
    """

    case_id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray | None
    tissue: np.ndarray | None
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape  # type: ignore[return-value]


def _read_bytes(path: Path) -> bytes:
    """The file's NIfTI bytes, decompressed if gzipped (checks the gzip CRC and length)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read file: {e.strerror or e}") from e
    if raw[:2] != b"\x1f\x8b":  # not gzip, whatever the extension says
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(
            path, f"unreadable or truncated gzip stream ({e}); re-export or re-copy the file"
        ) from e


def _parse(path: Path, raw: bytes) -> nib.Nifti1Image | nib.Nifti2Image:
    if len(raw) < 4:
        raise DataError(path, f"not a NIfTI file: only {len(raw)} bytes")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if _NIFTI1_HEADER in sizes:
        klass = nib.Nifti1Image
    elif _NIFTI2_HEADER in sizes:
        klass = nib.Nifti2Image
    else:
        raise DataError(path, "not a NIfTI file (its header does not start with size 348 or 540)")
    try:
        return klass.from_bytes(raw)
    except Exception as e:  # nibabel raises several types for malformed headers
        raise DataError(path, f"unreadable NIfTI header: {e}") from e


def _check_header(path: Path, img: nib.spatialimages.SpatialImage) -> None:
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4:
        raise DataError(path, f"4-D volume of shape {shape}; expected one 3-D volume (X, Y, Z)")
    if len(shape) != 3:
        raise DataError(path, f"{len(shape)}-D volume of shape {shape}; expected 3-D (X, Y, Z)")
    if min(shape) < 1:
        raise DataError(path, f"empty volume of shape {shape}")
    affine = img.affine
    if (
        affine is None
        or not np.all(np.isfinite(affine))
        or abs(np.linalg.det(affine[:3, :3])) < 1e-12
    ):
        raise DataError(path, "voxel-to-world affine is missing, non-finite or singular")
    dtype = img.get_data_dtype()
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(path, f"unsupported voxel data type {dtype} (expected integers or floats)")


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one 3-D NIfTI volume completely and reorient it to RAS canonical.

    Returns ``(data, affine)``: data (X, Y, Z) in its stored dtype (float where the header
    sets an intensity scaling), affine float64 (4, 4) voxel -> world in mm. Raises DataError
    naming ``path`` for a missing, truncated or corrupted file, a non-NIfTI file, a volume
    that is not 3-D, a bad affine or a non-numeric data type.
    """
    path = Path(path)
    img = _parse(path, _read_bytes(path))
    _check_header(path, img)
    try:
        canonical = nib.as_closest_canonical(img)
        data = np.asanyarray(canonical.dataobj)
    except Exception as e:  # a data block shorter than the header promises, mostly
        raise DataError(path, f"unreadable or truncated voxel data ({e})") from e
    return np.ascontiguousarray(data), np.asarray(canonical.affine, dtype=np.float64)


def _cast(path: Path, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise DataError(path, f"refusing to write non-finite values as {dtype}")
        values = np.rint(array) if np.issubdtype(array.dtype, np.floating) else array
        info = np.iinfo(dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise DataError(path, f"values [{values.min()}, {values.max()}] do not fit {dtype}")
        return values.astype(dtype)
    out = array.astype(dtype)
    if not np.all(np.isfinite(out)):
        raise DataError(path, f"refusing to write non-finite values (NaN/inf) as {dtype}")
    return out


def save_volume(
    path: str | Path, array: np.ndarray, affine: np.ndarray, dtype: str | np.dtype = np.float32
) -> None:
    """Write a 3-D volume as NIfTI-1 (``.nii`` or ``.nii.gz`` from the name), atomically.

    array: (X, Y, Z), cast to ``dtype`` (floats are rounded for integer dtypes; values must
    fit). affine: (4, 4) voxel -> world in mm, stored as both qform and sform (code 1,
    scanner). Gzip output is byte-for-byte reproducible (no timestamp). Raises DataError
    naming ``path`` for bad input; in that case nothing is written.
    """
    path = Path(path)
    array, affine, dtype = np.asarray(array), np.asarray(affine, dtype=np.float64), np.dtype(dtype)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise DataError(path, "output name must end in .nii or .nii.gz")
    if array.ndim != 3:
        raise DataError(
            path, f"refusing to write a {array.ndim}-D array {array.shape}; expected 3-D"
        )
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise DataError(
            path, f"refusing to write with affine of shape {affine.shape} or non-finite values"
        )
    img = nib.Nifti1Image(_cast(path, array, dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)


def load_case(case: CaseFiles, labels_optional: bool = False) -> LoadedCase:
    """Load and check every file of ``case`` (see ``fedsynth.common.data.validate``).

    Raises DataError naming the first bad file (and how many other problems there are) if the
    case does not pass validation; otherwise returns the case as a LoadedCase.
    """
    from fedsynth.common.data.validate import inspect_case  # validate builds on this module

    loaded, problems = inspect_case(case, labels_optional=labels_optional)
    if problems:
        more = (
            f" (and {len(problems) - 1} more problems in case {case.case_id})"
            if len(problems) > 1
            else ""
        )
        raise DataError(problems[0].path, problems[0].message + more)
    assert loaded is not None  # inspect_case returns a case whenever there are no problems
    return loaded
