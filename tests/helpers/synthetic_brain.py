"""Tiny synthetic brains with known tissue and tumour, in memory or as a BraTS 2021 cohort.

An ellipsoidal "brain": white-matter core, grey-matter shell, CSF rim and a small CSF
ventricle, with MRI-like contrast per modality (CSF dark on T1 and FLAIR, bright on T2; WM
bright on T1) plus noise, and optionally a tumour (enhancing rim, necrotic core, oedema halo)
in the white matter. Outside the brain every image is exactly 0, as in skull-stripped BraTS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsynth.common.data import brats
from fedsynth.common.data.loaded import LoadedCase
from fedsynth.common.io.nifti import save_volume

SHAPE = (36, 44, 30)
# Mean intensity per tissue class (0 unused, 1 CSF, 2 GM, 3 WM) and per tumour label (1, 2, 3).
TISSUE_MEANS = {
    "t1": (0, 300, 600, 900),
    "t1c": (0, 320, 620, 880),
    "t2": (0, 1500, 900, 600),
    "flair": (0, 200, 700, 500),
}
TUMOUR_MEANS = {
    "t1": (0, 250, 450, 500),
    "t1c": (0, 250, 450, 1400),
    "t2": (0, 1700, 1300, 1000),
    "flair": (0, 600, 1300, 900),
}


def anatomy(shape=SHAPE, tumour=True):
    """(tissue uint8, seg uint8) ground truth of shape ``shape``."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grid, (0.85, 0.9, 0.8), strict=True)))
    tissue = np.zeros(shape, np.uint8)
    tissue[r < 1.0] = 1
    tissue[r < 0.88] = 2
    tissue[r < 0.65] = 3
    ventricle = np.sqrt((grid[0] / 0.12) ** 2 + (grid[1] / 0.25) ** 2 + (grid[2] / 0.2) ** 2)
    tissue[ventricle < 1] = 1
    seg = np.zeros(shape, np.uint8)
    if tumour:
        d = np.sqrt((grid[0] - 0.3) ** 2 + (grid[1] - 0.2) ** 2 + (grid[2] - 0.1) ** 2)
        seg[d < 0.35] = brats.OEDEMA
        seg[d < 0.22] = brats.ENHANCING
        seg[d < 0.12] = brats.NECROTIC
        seg[tissue == 0] = 0
    return tissue, seg


def images_for(tissue, seg, seed=0, noise=25.0):
    """Modality -> float32 volume from the ground truth, > 0 inside the brain, 0 outside."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in brats.MODALITIES:
        vol = np.asarray(TISSUE_MEANS[m], np.float32)[tissue]
        tumour = seg > 0
        vol[tumour] = np.asarray(TUMOUR_MEANS[m], np.float32)[seg[tumour]]
        vol = vol + rng.normal(0, noise, tissue.shape).astype(np.float32)
        out[m] = np.where(tissue > 0, np.maximum(vol, 1.0), 0.0).astype(np.float32)
    return out


def loaded_case(case_id="synth", shape=SHAPE, tumour=True, seed=0, with_tissue=False):
    """A LoadedCase as ``validate.load_case`` would return it (already RAS)."""
    tissue, seg = anatomy(shape, tumour)
    return LoadedCase(
        case_id=case_id,
        images=images_for(tissue, seg, seed),
        seg=seg,
        tissue=tissue if with_tissue else None,
        affine=np.diag([2.0, 2.0, 2.0, 1.0]),
    )


def write_case(cohort: Path, case_id: str, tumour=True, seed=0, with_tissue=False) -> Path:
    """Write one synthetic case in BraTS 2021 naming (enhancing stored as 4); return its folder."""
    case = loaded_case(case_id, tumour=tumour, seed=seed, with_tissue=with_tissue)
    folder = cohort / case_id
    n = brats.BRATS2021
    for m, vol in case.images.items():
        save_volume(folder / n.filename(case_id, m), vol, case.affine, np.float32)
    labels = brats.labels_for_naming(case.seg, n)
    save_volume(folder / n.filename(case_id, brats.SEG), labels, case.affine, np.uint8)
    if with_tissue:
        save_volume(folder / f"{case_id}_tissue.nii.gz", case.tissue, case.affine, np.uint8)
    return folder
