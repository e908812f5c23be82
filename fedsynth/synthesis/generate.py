"""Label cases -> generator -> synthetic BraTS-layout cohort (2021 naming).

Each label case is cut into axial slices exactly as training data were (crop to the brain's
bounding box, pad to a square, nearest-neighbour resize to the generator's image size; see
``fedsynth.common.data.preprocess``), turned into the 7 one-hot condition channels, run
through the generator in batches, and the generated slices are resized back and reassembled
into volumes on the label case's grid.

Written per synthetic case ``synth_<i>``: ``_t1``, ``_t1ce``, ``_t2``, ``_flair`` (int16,
generator output [-1, 1] mapped to [0, 1000], at least 1 inside the brain and exactly 0
outside, like skull-stripped BraTS), ``_seg`` (uint8, enhancing stored as 4) and ``_tissue``
(uint8 0..3). Plus ``manifest.csv``, ``datasheet.json`` and ``contact_sheet.png``; the whole
folder is built under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fedsynth.common.config import Config
from fedsynth.common.data import brats
from fedsynth.common.data.brats import BRATS2021, MODALITIES, SEG
from fedsynth.common.data.datasets import condition_channels
from fedsynth.common.data.phantom import manifest_text
from fedsynth.common.data.preprocess import (
    bounding_box,
    pad_to_square,
    resize_images,
    resize_nearest,
)
from fedsynth.common.errors import CheckpointError, OutputExistsError
from fedsynth.common.gan.trainer import resolve_device
from fedsynth.common.io.atomic import atomic_directory, atomic_write_json, atomic_write_text
from fedsynth.common.io.nifti import save_volume, to_stored_orientation
from fedsynth.synthesis.case import LabelCase
from fedsynth.synthesis.datasheet import build_datasheet, write_contact_sheet
from fedsynth.synthesis.generator_io import load_generator
from fedsynth.synthesis.label_bank import LabelBank, build_label_bank, synthetic_label_cases
from fedsynth.synthesis.pipeline import BackgroundWriter, Prefetch

log = logging.getLogger(__name__)

INTENSITY_SCALE = 500.0  # stored = (x + 1) * 500: generator range [-1, 1] -> [0, 1000]
SCANNER_SITE = "synthetic"  # manifest.csv scanner_site of every synthetic case


def synthetic_id(index: int) -> str:
    return f"synth_{index:04d}"


@dataclass
class SliceStack:
    """Axial slices of one label case at generator resolution, and how to put them back.

    tissue, labels: uint8 (Z, S, S). z: int64 (Z,) axial indices in the case volume.
    bbox: brain bounding box (x0, x1, y0, y1, z0, z1), half-open. side: padded square side.
    """

    tissue: np.ndarray
    labels: np.ndarray
    z: np.ndarray
    bbox: tuple[int, int, int, int, int, int]
    side: int


def slice_case(case: LabelCase, size: int) -> SliceStack:
    """Every axial slice of ``case`` that shows brain, as the generator saw training slices."""
    bbox = bounding_box(case.brain)
    x0, x1, y0, y1, z0, z1 = bbox
    keep = np.flatnonzero(case.brain[x0:x1, y0:y1, z0:z1].any(axis=(0, 1))) + z0

    def axial(v: np.ndarray) -> np.ndarray:
        return np.moveaxis(v[x0:x1, y0:y1][:, :, keep], 2, 0).astype(np.uint8)

    tissue = resize_nearest(pad_to_square(axial(case.tissue), 0), size)
    labels = resize_nearest(pad_to_square(axial(case.labels), 0), size)
    labels[tissue == 0] = 0  # a tumour pixel outside the resized brain has no tissue under it
    return SliceStack(tissue, labels, keep.astype(np.int64), bbox, max(x1 - x0, y1 - y0))


def unslice(fake: np.ndarray, stack: SliceStack, case: LabelCase) -> np.ndarray:
    """Generated slices float32 (Z, 4, S, S) in [-1, 1] -> volumes float32 (4, X, Y, Z).

    Inverse of ``slice_case``: resize to the padded square, remove the padding, put each
    slice back at its z. Voxels outside the brain are -1.
    """
    x0, x1, y0, y1, _, _ = stack.bbox
    h, w = x1 - x0, y1 - y0
    full = resize_images(fake, stack.side)  # (Z, 4, L, L)
    ph, pw = (stack.side - h) // 2, (stack.side - w) // 2
    full = full[:, :, ph : ph + h, pw : pw + w]
    out = np.full((len(MODALITIES), *case.shape), -1.0, np.float32)
    out[:, x0:x1, y0:y1, stack.z] = np.moveaxis(full, 0, -1)
    return np.where(case.brain[None], np.clip(out, -1.0, 1.0), -1.0)


# Most pixels (slices x S x S) per forward pass on a CPU: 16 slices at 64 px, 4 at 128 px.
# Larger batches give activations over glibc's 32 MiB mmap threshold (batch 16 at 128 px:
# 32 channels x 128 x 128 x 16 x 4 bytes = 32 MiB), so every such tensor is a fresh mapping
# that is page-faulted and zeroed: measured with 1 thread at 128 px, 6.0 ms of CPU per slice
# at batch 16 against 4.7 ms at batch 4 (64 px: 1.4-1.5 ms at either).
CPU_BATCH_PIXELS = 16 * 64 * 64


def slices_per_batch(batch_size: int, image_size: int, device: Any) -> int:
    """``synthesis.batch_size``, capped on a CPU at ``CPU_BATCH_PIXELS`` pixels per batch."""
    if str(device).startswith("cuda"):
        return batch_size
    return max(1, min(batch_size, CPU_BATCH_PIXELS // (image_size * image_size)))


def generate_slices(module: Any, stack: SliceStack, batch_size: int, device: Any) -> np.ndarray:
    """Run the generator on a stack: float32 (Z, 4, S, S) in [-1, 1]."""
    batch_size = slices_per_batch(batch_size, stack.tissue.shape[-1], device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(stack.z), batch_size):
            cond = condition_channels(
                torch.from_numpy(stack.tissue[i : i + batch_size]).to(device),
                torch.from_numpy(stack.labels[i : i + batch_size]).to(device),
            )
            out.append(module(cond).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(MODALITIES), 1, 1), np.float32)


def to_stored_intensity(volumes: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """float32 (4, X, Y, Z) in [-1, 1] -> int16-ready float32: [0, 1000] mapped linearly, at
    least 1 inside the brain (so the brain is the nonzero voxels, as in BraTS), 0 outside."""
    scaled = np.rint((volumes + 1.0) * INTENSITY_SCALE)
    return np.where(brain[None], np.maximum(scaled, 1.0), 0.0).astype(np.float32)


# gzip of the written cohort: level 1 (nibabel's default too) against save_volume's 6, with
# zlib's run-length strategy (``gzip_bytes``). Measured on a 79 x 97 x 84 int16 volume of
# generator output: level 6 23 ms, level 1 10 ms (386 kB), level 1 RLE 5 ms (355 kB); at level
# 6 writing cost more CPU than the generator (benchmarks/bench_synthesis.py).
NIFTI_COMPRESSLEVEL = 1
NIFTI_RLE = True


def stored_volumes(fake: np.ndarray, stack: SliceStack, case: LabelCase) -> np.ndarray:
    """``to_stored_intensity(unslice(fake, stack, case), case.brain)`` computed on the brain's
    slab only (every brain voxel lies in its bounding box and in a kept slice): the same
    values with a third of the passes over the volume (measured ~2x less CPU at 2 mm), as
    int16 (the values are integers in [0, 1000]; the files store int16).

    fake: float32 (Z, 4, S, S) in [-1, 1] -> int16 (4, X, Y, Z).
    """
    x0, x1, y0, y1, _, _ = stack.bbox
    h, w = x1 - x0, y1 - y0
    ph, pw = (stack.side - h) // 2, (stack.side - w) // 2
    slab = resize_images(fake, stack.side)[:, :, ph : ph + h, pw : pw + w]  # (Z, 4, h, w)
    slab = np.rint((np.clip(slab, -1.0, 1.0) + 1.0) * INTENSITY_SCALE)
    np.maximum(slab, 1.0, out=slab)
    slab = slab.astype(np.int16)  # exact: integers in [1, 1000]
    brain = case.brain[x0:x1, y0:y1][:, :, stack.z]  # (h, w, Z)
    out = np.zeros((len(MODALITIES), *case.shape), np.int16)
    out[:, x0:x1, y0:y1, stack.z] = np.moveaxis(slab, 0, -1) * brain
    return out


# BraTS files are stored LPS; atlas cases (no source file) are written that way too, so that
# array-based pipelines mixing real and synthetic cases see both the same way round.
BRATS_STORED_AXES = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_case(folder: Path, case_id: str, case: LabelCase, stored: np.ndarray) -> None:
    """One synthetic case in BraTS 2021 naming (enhancing stored as 4) + its tissue map,
    in the stored orientation and affine of its source label map (``case.stored_affine``).

    stored: (4, X, Y, Z) stored intensities (``stored_volumes``), one per modality.
    """
    target = BRATS_STORED_AXES if case.stored_affine is None else case.stored_affine

    def save(name: str, volume: np.ndarray, dtype: type) -> None:
        array, affine = to_stored_orientation(volume, case.affine, target)
        save_volume(
            folder / name, array, affine, dtype, compresslevel=NIFTI_COMPRESSLEVEL, rle=NIFTI_RLE
        )

    for k, modality in enumerate(MODALITIES):
        save(BRATS2021.filename(case_id, modality), stored[k], np.int16)
    save(
        BRATS2021.filename(case_id, SEG), brats.labels_for_naming(case.labels, BRATS2021), np.uint8
    )
    save(f"{case_id}_tissue.nii.gz", case.tissue, np.uint8)


def check_finite(fake: np.ndarray, checkpoint: Any, case_id: str) -> None:
    """Refuse non-finite generator output (a diverged or damaged checkpoint): cast to int16,
    NaN would become 0 and silently cut holes in the brain."""
    bad = int(np.size(fake) - np.count_nonzero(np.isfinite(fake)))
    if bad:
        raise CheckpointError(
            checkpoint,
            f"the generator output {bad} non-finite values for {case_id}; it may have diverged",
        )


def finish_case(
    folder: Path, case_id: str, case: LabelCase, fake: np.ndarray, stack: SliceStack
) -> None:
    """Generated slices -> the written case: ``stored_volumes`` then ``write_case``. Runs in
    the writer thread, beside the generator's next case (its CPU is that of the writing)."""
    write_case(folder, case_id, case, stored_volumes(fake, stack, case))


@dataclass
class SampleSlice:
    """One slice for the contact sheet: condition (tissue, labels) and images, all (S, S)."""

    case_id: str
    tissue: np.ndarray
    labels: np.ndarray
    images: np.ndarray  # float32 (4, S, S) in [-1, 1]


def _sample_slice(case_id: str, stack: SliceStack, fake: np.ndarray) -> SampleSlice:
    area = (stack.labels > 0).sum(axis=(1, 2))
    k = int(area.argmax()) if area.max() > 0 else int((stack.tissue > 0).sum(axis=(1, 2)).argmax())
    images = np.where(stack.tissue[k][None] > 0, fake[k], -1.0)  # background as stored: -1
    return SampleSlice(case_id, stack.tissue[k], stack.labels[k], images)


# CPU cores left to the pipeline's two other threads (label cases ahead, writing behind):
# the generator's torch threads otherwise share every core with them, and a forward pass
# waits at each barrier for its thread that lost its core to the writer.
PIPELINE_CORES = 1


@contextlib.contextmanager
def generator_threads(device: Any) -> Iterator[None]:
    """On a CPU: torch threads for the generator = current count - ``PIPELINE_CORES`` (at
    least 1) for the block, then restored. No-op on other devices."""
    threads = torch.get_num_threads()
    if str(device) != "cpu" or threads <= 1:
        yield
        return
    torch.set_num_threads(max(1, threads - PIPELINE_CORES))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


CONTACT_SHEET_ROWS = 6  # the first cases' largest-tumour slices, one row each


class LabelCases:
    """The label cases of one synthesis, ``(i, case)`` for i < n, with their bank built on
    first iteration: in the prefetch thread, while the main thread loads the generator (a
    bad checkpoint is still reported before a bad label source). ``bank`` is set then."""

    def __init__(self, cfg: Config, n: int):
        self.cfg, self.n = cfg, n
        self.bank: LabelBank | None = None

    def __iter__(self) -> Iterator[tuple[int, LabelCase]]:
        self.bank = build_label_bank(self.cfg)
        yield from synthetic_label_cases(self.bank, self.n, self.cfg.synthesis)


@dataclass
class SynthesisResult:
    out: Path
    cases: int
    slices: int
    seconds: float  # generation (slicing + inference + reassembly + writing) wall time
    provenance: list[dict[str, Any]]


def synthesize(
    cfg: Config,
    checkpoint: str | Path,
    out: str | Path,
    cases: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthesisResult:
    """Write a synthetic cohort of ``cases`` (default ``cfg.synthesis.cases``) to ``out``.

    Label cases from ``build_label_bank(cfg)`` with the ``synthesis`` section's edits, images
    from the generator in ``checkpoint``. Deterministic for ``cfg.synthesis.seed`` (on a given
    device). Raises OutputExistsError if ``out`` exists and not ``overwrite`` (checked before
    any work), CheckpointError for a bad checkpoint, DataError for a bad cohort label source.
    """

    out = Path(out)
    n = cfg.synthesis.cases if cases is None else cases
    if n < 1:
        raise ValueError(f"cases must be >= 1, got {n}")
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    # Label cases are built one ahead (from now on: the first while the generator loads) and
    # cases written behind the generator (pipeline.py).
    label_cases = LabelCases(cfg, n)
    with Prefetch(label_cases) as ahead:
        gen = load_generator(checkpoint, fallback=cfg)
        device = resolve_device(cfg.synthesis.device)
        gen.module.to(device)
        torch.manual_seed(cfg.synthesis.seed)
        provenance, samples, n_slices = [], [], 0
        start = time.perf_counter()
        with (
            atomic_directory(out, overwrite=overwrite) as tmp,
            BackgroundWriter() as writer,
            generator_threads(device),
        ):
            bar = tqdm(ahead, total=n, unit="case", desc="synthesize", disable=not progress)
            for i, case in bar:
                case_id = synthetic_id(i)
                stack = slice_case(case, gen.image_size)
                fake = generate_slices(gen.module, stack, cfg.synthesis.batch_size, device)
                check_finite(fake, checkpoint, case_id)
                writer.submit(finish_case, tmp / case_id, case_id, case, fake, stack)
                n_slices += len(stack.z)
                provenance.append({"case": case_id, **case.provenance()})
                if len(samples) < CONTACT_SHEET_ROWS:
                    samples.append(_sample_slice(case_id, stack, fake))
                    if len(samples) == CONTACT_SHEET_ROWS or i == n - 1:  # drawn meanwhile
                        writer.submit(write_contact_sheet, samples, tmp / "contact_sheet.png")
                bar.set_postfix(slices=n_slices)
            writer.wait()
            seconds = time.perf_counter() - start
            rows = [(p["case"], SCANNER_SITE, "") for p in provenance]
            atomic_write_text(tmp / "manifest.csv", manifest_text(rows))
            sheet = build_datasheet(
                cfg, gen, label_cases.bank, provenance, n_slices=n_slices, device=str(device)
            )
            atomic_write_json(tmp / "datasheet.json", sheet)
    log.info("wrote %d synthetic cases (%d slices) to %s in %.1f s", n, n_slices, out, seconds)
    return SynthesisResult(out, n, n_slices, seconds, provenance)
