"""Anatomy of the phantom cohort: nilearn's MNI152 template, warped per subject.

nilearn ships the 1 mm MNI152 (ICBM 2009) T1 template, its grey- and white-matter
probability maps and a brain mask inside the package, so nothing is downloaded. CSF is what
the brain mask holds beyond GM and WM (ventricles, sulci, the outer CSF band).

Coordinates are world millimetres (RAS, MNI space) unless a name says ``_vox``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GRID_MARGIN_MM = 6.0  # room around the template's brain for deformation and mass effect
DEEP_WM_MIN_DEPTH_MM = 22.0  # tumour centres lie at least this far inside the brain
SUPRATENTORIAL_MIN_Z_MM = -8.0  # adult gliomas are mostly above the tentorium


@dataclass(frozen=True)
class Template:
    """Tissue maps of the 1 mm template and the output grid of a cohort.

    maps: float32 (3, X, Y, Z), CSF / GM / WM probabilities in [0, 1] on the (cropped) 1 mm
        template grid, pre-smoothed against aliasing at the output voxel size.
    world_to_vox: float64 (4, 4), world mm -> index into ``maps``.
    centres_mm: float32 (M, 3), candidate tumour centres in deep supratentorial white matter.
    grid_shape: the cohort's output grid (X, Y, Z); grid_affine: float64 (4, 4), voxel -> mm.
    """

    maps: np.ndarray
    world_to_vox: np.ndarray
    centres_mm: np.ndarray
    grid_shape: tuple[int, int, int]
    grid_affine: np.ndarray

    @property
    def voxel_size(self) -> float:
        return float(self.grid_affine[0, 0])


@dataclass(frozen=True)
class _Mni152:
    """The 1 mm maps cropped to the brain: csf/gm/wm float32, brain bool, voxel -> mm."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    vox_to_world: np.ndarray
    centres_mm: np.ndarray


@functools.lru_cache(maxsize=1)
def _mni152() -> _Mni152:
    """Read the maps shipped inside nilearn (no download) once per process."""
    from nilearn import datasets  # slow import (~2 s); only when a cohort is generated

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0.5
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    gm, wm, brain = gm[crop], wm[crop], brain[crop]
    vox_to_world = gm_img.affine @ _translation(lo)
    depth = ndimage.distance_transform_edt(brain)  # 1 mm voxels, so depth is in mm
    deep_wm = (wm > 0.6) & (depth > DEEP_WM_MIN_DEPTH_MM)
    centres = _apply(vox_to_world, np.argwhere(deep_wm).T.astype(np.float64)).T
    centres = centres[centres[:, 2] > SUPRATENTORIAL_MIN_Z_MM]
    return _Mni152(
        csf=np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0),
        gm=gm,
        wm=wm,
        brain=brain,
        vox_to_world=vox_to_world,
        centres_mm=centres.astype(np.float32),
    )


@functools.lru_cache(maxsize=4)
def load_template(voxel_size: float) -> Template:
    """The template prepared for an output grid of ``voxel_size`` mm (cached per process)."""
    mni = _mni152()
    maps = np.stack([mni.csf, mni.gm, mni.wm])
    sigma = 0.4 * max(voxel_size - 1.0, 0.0)  # anti-aliasing before sampling on a coarse grid
    if sigma > 0:
        maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps])
    lo_mm = _apply(mni.vox_to_world, np.zeros((3, 1)))[:, 0] - GRID_MARGIN_MM
    far_corner = np.array(mni.brain.shape, float)[:, None] - 1
    hi_mm = _apply(mni.vox_to_world, far_corner)[:, 0] + GRID_MARGIN_MM
    shape = tuple(int(n) for n in np.ceil((hi_mm - lo_mm) / voxel_size).astype(int) + 1)
    grid_affine = np.diag([voxel_size] * 3 + [1.0])
    grid_affine[:3, 3] = (lo_mm + hi_mm) / 2 - (np.array(shape) - 1) / 2 * voxel_size
    maps = maps.astype(np.float32, copy=False)
    maps.setflags(write=False)  # shared between callers through the cache
    return Template(
        maps=maps,
        world_to_vox=np.linalg.inv(mni.vox_to_world),
        centres_mm=mni.centres_mm,
        grid_shape=shape,  # type: ignore[arg-type]
        grid_affine=grid_affine,
    )


def _translation(offset: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = offset
    return t


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) affine to points of shape (3, ...)."""
    flat = points.reshape(3, -1)
    out = affine[:3, :3] @ flat + affine[:3, 3:4]
    return out.reshape(points.shape)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing_vox: float
) -> np.ndarray:
    """A smooth random field of unit standard deviation, float32 of ``shape`` (3-D).

    Gaussian random values on a coarse lattice (``spacing_vox`` apart) interpolated with a
    separable Gaussian kernel: three small matrix products instead of a full-volume filter.
    """
    lattice = rng.standard_normal(tuple(int(np.ceil(n / spacing_vox)) + 3 for n in shape)).astype(
        np.float32
    )
    w = []
    for axis, n in enumerate(shape):
        nodes = np.linspace(-spacing_vox, n - 1 + spacing_vox, lattice.shape[axis])
        k = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / (0.6 * spacing_vox)) ** 2)
        w.append((k / k.sum(1, keepdims=True)).astype(np.float32))
    field = np.einsum("jb,ibc->ijc", w[1], np.einsum("ia,abc->ibc", w[0], lattice)) @ w[2].T
    return field / max(float(field.std()), 1e-6)


def subject_coordinates(
    rng: np.random.Generator,
    template: Template,
    *,
    max_rotation_deg: float = 6.0,
    scale_sd: float = 0.05,
    shift_mm: float = 4.0,
    deform_mm: float = 2.5,
    deform_spacing_mm: float = 30.0,
) -> np.ndarray:
    """Where each output voxel of one subject comes from in template space.

    A random affine (rotation, anisotropic scale, shift about the brain centre) plus a smooth
    random deformation (``deform_mm`` standard deviation per axis). Returns float32
    (3, X, Y, Z), template world mm.
    """
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    matrix = _rotation(angles) @ np.diag(1.0 + scale_sd * rng.standard_normal(3))
    shift = rng.uniform(-shift_mm, shift_mm, 3)
    vs, origin = template.voxel_size, template.grid_affine[:3, 3]
    axes = [origin[k] + vs * np.arange(n) for k, n in enumerate(template.grid_shape)]
    centre = np.array([a.mean() for a in axes])
    spacing = deform_spacing_mm / vs
    coords = np.empty((3, *template.grid_shape), np.float32)
    for k in range(3):
        # Separable broadcasting: an affine of a regular grid never needs the full grid.
        coords[k] = (
            matrix[k, 0] * (axes[0] - centre[0])[:, None, None]
            + matrix[k, 1] * (axes[1] - centre[1])[None, :, None]
            + matrix[k, 2] * (axes[2] - centre[2])[None, None, :]
            + centre[k]
            + shift[k]
        )
        coords[k] += deform_mm * smooth_field(rng, template.grid_shape, spacing)
    return coords


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_anatomy(template: Template, coords_mm: np.ndarray) -> np.ndarray:
    """CSF / GM / WM probabilities at template points ``coords_mm`` (3, X, Y, Z).

    Returns float32 (3, X, Y, Z) in [0, 1]; their sum is the brain fraction (0 outside).
    """
    vox = _apply(template.world_to_vox, coords_mm.astype(np.float64))
    return np.stack(
        [
            ndimage.map_coordinates(m, vox, order=1, mode="constant", cval=0.0, prefilter=False)
            for m in template.maps
        ]
    ).astype(np.float32)


def sample_anatomy_fast(template: Template, coords_mm: np.ndarray) -> np.ndarray:
    """``sample_anatomy`` with torch's trilinear ``grid_sample``: ~5x less CPU (one pass over
    the three maps, float32, no float64 copy of the coordinates), the same values except in
    the one-voxel band at the edge of the template's box (grid_sample blends with zero
    beyond the last voxel, scipy's "constant" mode does not). Used by the atlas label bank
    (synthesis); the phantom cohort keeps ``sample_anatomy``, so phantom data stay
    bit-identical to earlier releases.

    coords_mm: float32 (3, X, Y, Z) template world mm -> float32 (3, X, Y, Z) in [0, 1].
    """
    import torch  # lazy: phantom generation and the CLI start without torch

    maps = _torch_maps(template.voxel_size)
    n = np.array(template.maps.shape[1:], np.float64)
    # world mm -> grid_sample's normalised coordinates (-1 .. 1 over the map's voxel centres,
    # last grid axis ordered (W, H, D) = map axes (2, 1, 0)), folded into one affine.
    scale = 2.0 / (n - 1)
    matrix = (scale[:, None] * template.world_to_vox[:3, :3])[::-1]
    offset = (scale * template.world_to_vox[:3, 3] - 1.0)[::-1]
    points = torch.from_numpy(np.ascontiguousarray(coords_mm, np.float32)).reshape(3, -1)
    grid = torch.addmm(
        torch.from_numpy(offset.astype(np.float32)), points.T,
        torch.from_numpy(np.ascontiguousarray(matrix.T, np.float32)),
    )  # fmt: skip
    with torch.inference_mode():
        out = torch.nn.functional.grid_sample(
            maps, grid.reshape(1, *coords_mm.shape[1:], 3), mode="bilinear",
            padding_mode="zeros", align_corners=True,
        )  # fmt: skip
    return out[0].contiguous().numpy()


@functools.lru_cache(maxsize=2)
def _torch_maps(voxel_size: float):  # -> torch.Tensor (1, 3, X, Y, Z), channels-last
    import torch

    maps = torch.from_numpy(np.array(load_template(voxel_size).maps))[None]
    # Channels-last: the three maps of one voxel side by side, one gather per corner.
    return maps.contiguous(memory_format=torch.channels_last_3d)
