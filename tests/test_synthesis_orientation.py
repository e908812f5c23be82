"""Synthetic cases are written in the orientation and affine of their source label map.

BraTS files are stored LPS; fedsynth works in RAS internally. A pipeline that mixes real and
synthetic cases by array index (most segmentation code) must not see mirrored volumes, so a
real case's label map must come back from ``synthesize`` as the identical stored array, with
the identical affine.
"""

from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
from fixtures.brats_cases import CASE_2023, copy_2023

from fedsynth.common.config import load_config
from fedsynth.common.data import brats
from fedsynth.common.data.preprocess import brain_mask
from fedsynth.common.io.checkpoints import save_checkpoint
from fedsynth.common.models.registry import architecture_hash, build_generator
from fedsynth.synthesis.generate import synthesize

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
NO_EDITS = [
    f"synthesis.{k}=0.0" for k in ("p_transplant", "p_scale", "p_rotate", "p_translate", "p_remove")
]


def _generator(cfg, path: Path) -> Path:
    return save_checkpoint(
        path,
        build_generator(cfg.model).state_dict(),
        architecture=cfg.model.generator,
        config_hash=architecture_hash(cfg.model),
        step=1,
        extra={"model": asdict(cfg.model), "image_size": cfg.preprocess.image_size},
    )


def _stored(path: Path):
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def test_real_label_map_round_trips_through_synthesize(tmp_path):
    source = copy_2023(tmp_path / "cohort")
    cfg = load_config(
        SMOKE,
        [
            "synthesis.label_source=cohort",
            f"synthesis.cohort_dir={tmp_path / 'cohort'}",
            "synthesis.cases=1",
            "synthesis.device=cpu",
            *NO_EDITS,
        ],
    )
    synthesize(cfg, _generator(cfg, tmp_path / "g.safetensors"), tmp_path / "out", progress=False)
    seg_in, affine_in = _stored(source / f"{CASE_2023}-seg.nii.gz")
    seg_out, affine_out = _stored(tmp_path / "out" / "synth_0000" / "synth_0000_seg.nii.gz")
    assert nib.aff2axcodes(affine_in) == ("L", "P", "S")
    expected = brats.labels_for_naming(np.rint(seg_in).astype(np.uint8), brats.BRATS2021)
    np.testing.assert_array_equal(seg_out, expected)  # same array, not mirrored
    np.testing.assert_array_equal(affine_out, affine_in)  # same affine, bit for bit
    t1, t1_affine = _stored(tmp_path / "out" / "synth_0000" / "synth_0000_t1.nii.gz")
    assert t1.shape == seg_in.shape and np.array_equal(t1_affine, affine_in)
    case = brats.find_case(source)
    stored_images = {m: _stored(p)[0] for m, p in case.images.items()}
    np.testing.assert_array_equal(t1 > 0, brain_mask(stored_images, seg_in))  # brain not mirrored


def test_atlas_cases_are_written_like_brats(tmp_path):
    cfg = load_config(
        SMOKE,
        ["synthesis.atlas_voxel_size=6", "synthesis.atlas_anatomies=2", "synthesis.cases=1",
         "synthesis.device=cpu"],
    )  # fmt: skip
    synthesize(cfg, _generator(cfg, tmp_path / "g.safetensors"), tmp_path / "out", progress=False)
    img = nib.load(tmp_path / "out" / "synth_0000" / "synth_0000_seg.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
