"""The slices every arm trains and is scored on: real sites, held-out patients, synthetic cohorts.

Real data come from the config's cohort and split through ``site_slices``. A synthetic cohort
(a folder ``fedsynth synthesize`` wrote, or one synthesised here from a checkpoint) goes
through the same preprocessing and cache code (``cache.build_slices``), so real and synthetic
slices are cropped, normalised and resized identically. The ``public-only`` arm's cohort is
synthesised the same way from ``benchmark.public_checkpoint``, a generator that never saw
site data. Each test patient's grid spacing in mm (``spacing.cohort_spacings``) turns HD95
into millimetres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedsynth.benchmark.spacing import Spacing, cohort_spacings
from fedsynth.common.config import Config, expand_path
from fedsynth.common.data.brats import discover_cases
from fedsynth.common.data.cache import SliceCache, build_slices, site_slices
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.errors import ConfigError, DataError
from fedsynth.common.rundir import SYNTHETIC_DIR

log = logging.getLogger(__name__)

PUBLIC_SYNTHETIC_DIR = "public-synthetic"  # RUN_DIR/benchmark/<this>: the public-only cohort


@dataclass
class BenchmarkData:
    """sites: site name ("site-0", ...) -> that site's training slices; test: held-out
    patients' slices; test_spacings: test subject -> mm per grid step (z, x, y);
    synthetic / public: the synthetic cohort's and the public generator's cohort's slices, or
    None when no arm needs them."""

    sites: dict[str, SliceCache]
    test: SliceCache
    test_spacings: dict[str, Spacing]
    synthetic: SliceCache | None = None
    public: SliceCache | None = None

    @property
    def site_names(self) -> list[str]:
        return list(self.sites)


def cohort_slices(cfg: Config, cohort_dir: str | Path, name: str) -> SliceCache:
    """Slice cache of every case in ``cohort_dir`` (any BraTS-layout folder), built with the
    config's preprocessing under ``data.cache_dir``; reused while the files are unchanged."""
    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise DataError(cohort_dir, "synthetic cohort folder does not exist")
    subjects = [c.case_id for c in discover_cases(cohort_dir)]
    if not subjects:
        raise DataError(cohort_dir, "no cases found (expected BraTS-layout subject folders)")
    return build_slices(
        cohort_dir=cohort_dir,
        subjects=subjects,
        name=name,
        preprocess=cfg.preprocess,
        cache_root=expand_path(cfg.data.cache_dir) / "slices",
        strict=cfg.data.strict,
    )


def synthetic_cohort(
    cfg: Config,
    out_dir: Path,
    synthetic: Path | None,
    checkpoint: Path | None,
    folder: str = SYNTHETIC_DIR,
) -> Path | None:
    """The synthetic cohort folder: ``synthetic`` as given, or synthesised from ``checkpoint``
    into ``out_dir/folder`` (``benchmark.synthetic_cases`` cases; reused if already there)."""
    if synthetic is not None and checkpoint is not None:
        raise ConfigError(
            "--synthetic", "give either --synthetic DIR or --checkpoint CKPT, not both"
        )
    if synthetic is not None:
        return Path(synthetic)
    if checkpoint is None:
        return None
    from fedsynth.synthesis.generate import synthesize

    target = out_dir / folder
    if (target / "datasheet.json").is_file():
        log.info("reusing the synthetic cohort in %s", target)
        return target
    synthesize(cfg, checkpoint, target, cases=cfg.benchmark.synthetic_cases, overwrite=True)
    return target


def load_benchmark_data(
    cfg: Config,
    synthetic_dir: Path | None,
    need_synthetic: bool,
    public_dir: Path | None = None,
    spacings: dict[str, Spacing] | None = None,
) -> BenchmarkData:
    """Build or reuse the caches of every site, the test split and the synthetic cohorts;
    ``spacings``: the test patients' grid spacings when already known (worker processes)."""
    cohort = resolve_cohort(cfg)
    split = load_split(cohort)
    if not split.test:
        raise DataError(cohort, "the split has no test patients to score on")
    sites = {name: site_slices(cfg, subjects, name) for name, subjects in split.sites.items()}
    test = site_slices(cfg, split.test, "test")
    if spacings is None:
        spacings = cohort_spacings(cohort, test.patients, cfg.preprocess.image_size)
    public = cohort_slices(cfg, public_dir, "public-synthetic") if public_dir else None
    synthetic = None
    if need_synthetic:
        if synthetic_dir is None:
            raise ConfigError(
                "benchmark.arms",
                "arms synthetic, local+synthetic and synthetic->finetune need --synthetic DIR "
                "or --checkpoint CKPT (or remove them from benchmark.arms)",
            )
        synthetic = cohort_slices(cfg, synthetic_dir, "synthetic")
    return BenchmarkData(sites, test, spacings, synthetic, public)
