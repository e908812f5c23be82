"""One loaded case -> normalised, cropped, resized axial slices with tumour and tissue labels.

Steps (volumes arrive reoriented to RAS by ``validate.load_case``, so axis 2 is axial):

1. brain mask: union of the voxels of the four contrasts that differ from that contrast's
   background value (0 in BraTS, whose images are skull stripped with an exact-zero
   background; the constant a normalised copy gave it otherwise, see ``background``) and of
   the tumour label, largest 3D connected component, holes filled;
2. crop every volume to the mask's bounding box;
3. per contrast: clip to the [lower, upper] percentile window of the brain voxels and scale
   to [-1, 1]; everything outside the brain is -1;
4. tissue labels (``tissue.py``): the case's tissue file if it has one, else a Gaussian
   mixture; tissue > 0 exactly on the brain;
5. keep the axial slices whose brain covers at least ``min_brain_fraction`` of the cropped
   slice area (X_crop * Y_crop). The cropped frame is the brain's own bounding box, so the
   threshold reads "this slice shows at least that share of a full brain section" whatever
   the field of view or voxel size; it drops the thin caps at the top and bottom of the
   brain, which carry little anatomy for the generator to learn;
6. pad each slice to a square (centred; images with -1, labels with 0) so the aspect ratio
   survives, then resize to image_size x image_size: images bilinearly with antialiasing,
   labels and tissue by nearest neighbour; image pixels where the resized tissue is 0 (outside
   the brain) are set to exactly -1, so "tissue == 0" and "image == -1 background" agree.

Slice orientation: a slice is ``volume[:, :, z]`` in RAS voxel order, rows = x (right-left
axis), columns = y (posterior -> anterior). ``display_view`` turns it for viewing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fedsynth.common.config import PreprocessConfig
from fedsynth.common.data import tissue as tissue_mod
from fedsynth.common.data.background import find_background
from fedsynth.common.data.brats import MODALITIES
from fedsynth.common.data.loaded import LoadedCase
from fedsynth.common.errors import DataError


@dataclass
class PreprocessedCase:
    """The slices of one case, ready for the cache.

    images: float32 (Z, 4, S, S) in [-1, 1], channels t1, t1c, t2, flair; -1 outside brain.
    labels: uint8 (Z, S, S) tumour labels 0..3 (internal convention).
    tissue: uint8 (Z, S, S) 0 background, 1 CSF, 2 GM, 3 WM.
    z: int64 (Z,) axial index of each slice in the RAS volume as loaded.
    bbox: (x0, x1, y0, y1, z0, z1) brain bounding box in the RAS volume (half-open).
    """

    case_id: str
    images: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    z: np.ndarray
    bbox: tuple[int, int, int, int, int, int]


def brain_mask(
    images: dict[str, np.ndarray],
    seg: np.ndarray | None = None,
    background: Mapping[str, float | None] | None = None,
) -> np.ndarray:
    """bool (X, Y, Z): differs from its background in any contrast (or is tumour), largest
    component, holes filled.

    background: modality -> background value (``LoadedCase.background``); found with
    ``background.find_background`` where not given, 0 where the image has none.
    An all-background case gives an empty mask (``preprocess_case`` reports it).
    """
    vols = list(images.values())
    mask = np.zeros(vols[0].shape, dtype=bool)
    for m, v in images.items():
        value = (background or {}).get(m)
        if value is None:
            value = find_background(v) or 0.0
        mask |= v != value
    if seg is not None:
        mask |= seg > 0
    if not mask.any():
        return mask
    # Work inside the bounding box plus a voxel of margin: everything outside it is
    # background anyway, so the result is the same, at a third of the voxels on BraTS.
    x0, x1, y0, y1, z0, z1 = bounding_box(mask)
    box = tuple(
        slice(max(a - 1, 0), min(b + 1, n))
        for (a, b), n in zip(((x0, x1), (y0, y1), (z0, z1)), mask.shape, strict=True)
    )
    out = np.zeros_like(mask)
    out[box] = _largest_component_filled(mask[box])
    return out


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    # Full 3x3x3 connectivity: thin structures that touch only at corners stay attached.
    comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        mask = comps == sizes.argmax()
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """Half-open (x0, x1, y0, y1, z0, z1) of the True voxels of a non-empty 3D mask."""
    out: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out += [int(idx[0]), int(idx[-1]) + 1]
    return tuple(out)  # type: ignore[return-value]


def normalise_intensity(
    volume: np.ndarray, brain: np.ndarray, lower: float, upper: float, where: str = "<volume>"
) -> np.ndarray:
    """float32 same shape, in [-1, 1]: brain voxels clipped to their [lower, upper] percentile
    window and scaled linearly (window low -> -1, high -> 1); outside the brain -1.

    Raises DataError (naming ``where``) if the window is empty (constant intensity in the brain).
    """
    lo, hi = np.percentile(volume[brain], [lower, upper])
    if not hi > lo:
        raise DataError(where, f"constant intensity ({lo:g}) inside the brain; cannot normalise")
    scaled = (np.clip(volume, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    return np.where(brain, scaled, -1.0).astype(np.float32)


def select_slices(brain: np.ndarray, min_fraction: float) -> np.ndarray:
    """int64 indices of the axial slices (axis 2) whose brain area is >= min_fraction of the
    slice area (and at least one voxel)."""
    area = brain.sum(axis=(0, 1))
    keep = (area >= min_fraction * brain.shape[0] * brain.shape[1]) & (area > 0)
    return np.flatnonzero(keep).astype(np.int64)


def pad_to_square(stack: np.ndarray, value: float) -> np.ndarray:
    """Pad the last two axes of ``stack`` (..., H, W) to (..., L, L), L = max(H, W), centred."""
    h, w = stack.shape[-2:]
    side = max(h, w)
    ph, pw = side - h, side - w
    pad = [(0, 0)] * (stack.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(stack, pad, mode="constant", constant_values=value)


def resize_images(stack: np.ndarray, size: int) -> np.ndarray:
    """float32 (N, C, L, L) -> (N, C, size, size): bilinear, antialiased when shrinking.

    Bilinear (and its antialiasing triangle filter) has non-negative weights, so the output
    stays inside the input's value range.
    """
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.numpy()


def resize_nearest(stack: np.ndarray, size: int) -> np.ndarray:
    """(N, L, L) integer or bool -> (N, size, size), same dtype, nearest neighbour: no new values."""
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=(size, size), mode="nearest-exact")[:, 0].numpy()
    return np.rint(out).astype(stack.dtype)


def display_view(slice_2d: np.ndarray) -> np.ndarray:
    """Turn an (S, S) slice for display: anterior up, patient's right on the viewer's right."""
    return np.rot90(slice_2d)


def _tissue_volume(
    case: LoadedCase, norm: dict[str, np.ndarray], brain: np.ndarray, seg, crop, cfg
) -> np.ndarray:
    if case.tissue is not None:
        return tissue_mod.use_tissue_file(case.tissue[crop], brain, case.case_id)
    tumour = seg > 0 if seg is not None else None
    return tissue_mod.compute_tissue(norm, brain, tumour, cfg.tissue_seed, case.case_id)


def preprocess_case(case: LoadedCase, cfg: PreprocessConfig) -> PreprocessedCase:
    """Turn one loaded case (RAS volumes) into resized axial slices; see the module docstring.

    Raises DataError naming the case for an empty brain, a constant contrast, or no slice
    with enough brain.
    """
    missing = [m for m in MODALITIES if m not in case.images]
    if missing:
        raise DataError(case.case_id, f"missing contrasts {missing}; need {list(MODALITIES)}")
    brain_full = brain_mask(case.images, case.seg, case.background)
    if not brain_full.any():
        raise DataError(case.case_id, "all images are zero: no brain to preprocess")
    bbox = bounding_box(brain_full)
    crop = (slice(bbox[0], bbox[1]), slice(bbox[2], bbox[3]), slice(bbox[4], bbox[5]))
    brain = brain_full[crop]
    seg = case.seg[crop] if case.seg is not None else None
    norm = {
        m: normalise_intensity(
            case.images[m][crop],
            brain,
            cfg.lower_percentile,
            cfg.upper_percentile,
            where=f"{case.case_id} ({m})",
        )
        for m in MODALITIES
    }
    tissue = _tissue_volume(case, norm, brain, seg, crop, cfg)
    keep = select_slices(brain, cfg.min_brain_fraction)
    if keep.size == 0:
        raise DataError(
            case.case_id,
            f"no axial slice has brain on >= {cfg.min_brain_fraction} of its area "
            "(lower preprocess.min_brain_fraction?)",
        )
    return _slices(case.case_id, norm, seg, tissue, keep, bbox, cfg.image_size)


def _slices(case_id, norm, seg, tissue, keep, bbox, size) -> PreprocessedCase:
    # (X, Y, Z) -> (Z, X, Y) slice stacks for the kept z.
    def axial(v: np.ndarray) -> np.ndarray:
        return np.moveaxis(v[:, :, keep], 2, 0)

    images = np.stack([axial(norm[m]) for m in MODALITIES], axis=1)  # (Z, 4, X, Y)
    labels = axial(seg) if seg is not None else np.zeros_like(axial(tissue))
    images = resize_images(pad_to_square(images, -1.0), size)
    labels = resize_nearest(pad_to_square(labels.astype(np.uint8), 0), size)
    # tissue > 0 exactly on the brain, and nearest neighbour samples the same source pixel
    # for every map, so the resized tissue is also the resized brain mask.
    tissue_s = resize_nearest(pad_to_square(axial(tissue), 0), size)
    images = np.where(tissue_s[:, None] > 0, np.clip(images, -1.0, 1.0), -1.0).astype(np.float32)
    return PreprocessedCase(
        case_id=case_id,
        images=images,
        labels=labels,
        tissue=tissue_s,
        z=(keep + bbox[4]).astype(np.int64),
        bbox=bbox,
    )
