"""The phantom cohort: fedsynth's built-in data set, written in BraTS 2021 layout.

Per subject: nilearn's MNI152 anatomy under a random affine and smooth deformation
(``phantom_anatomy``), a procedurally grown tumour with mass effect (``phantom_tumour``),
the four contrasts with the subject's scanner-site effects (``phantom_mri``). Some subjects
are healthy (``PhantomConfig.healthy_fraction``).

Output (``generate_phantom_cohort``)::

    DIR/manifest.csv                  subject,scanner_site,split (split empty)
    DIR/phantom.json                  settings, site profiles, every subject's tumour
    DIR/<id>/<id>_{t1,t1ce,t2,flair}.nii.gz   int16, skull-stripped
    DIR/<id>/<id>_seg.nii.gz          uint8 0/1/2/4 (BraTS 2021: enhancing stored as 4)
    DIR/<id>/<id>_tissue.nii.gz       uint8 0 bg, 1 CSF, 2 GM, 3 WM

Everything is a function of the settings: the same ``PhantomConfig`` gives identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsynth.common.config import PhantomConfig
from fedsynth.common.data.brats import BRATS2021, MODALITIES, SEG, labels_for_naming
from fedsynth.common.data.phantom_anatomy import (
    Template,
    load_template,
    sample_anatomy,
    subject_coordinates,
)
from fedsynth.common.data.phantom_mri import (
    SiteProfile,
    class_fractions,
    render_contrasts,
    site_profiles,
)
from fedsynth.common.data.phantom_tumour import (
    TumourSpec,
    apply_mass_effect,
    sample_tumour,
    tumour_labels,
)
from fedsynth.common.errors import ConfigError
from fedsynth.common.io.atomic import atomic_directory

log = logging.getLogger(__name__)

PHANTOM_VERSION = 1  # bump when the generator changes: cached cohorts are then rebuilt
MANIFEST = "manifest.csv"
METADATA = "phantom.json"
MANIFEST_COLUMNS = ("subject", "scanner_site", "split")


@dataclass(frozen=True)
class PhantomSubject:
    """What was drawn for one subject (recorded in phantom.json)."""

    subject: str
    scanner_site: str
    tumour: TumourSpec | None  # None: healthy subject


DEFAULT_PREFIX = "phantom"


def subject_id(index: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}_{index:04d}"


def scanner_names(cfg: PhantomConfig) -> list[str]:
    """Scanner site names: "scanner-<k>", or "<id_prefix>-scanner-<k>" for another prefix
    (a public cohort's scanners are then never confused with the sites')."""
    lead = "" if cfg.id_prefix == DEFAULT_PREFIX else f"{cfg.id_prefix}-"
    return [f"{lead}scanner-{k}" for k in range(cfg.sites)]


def cohort_site_profiles(cfg: PhantomConfig) -> list[SiteProfile]:
    """The scanner profiles of a cohort, named by ``scanner_names``."""
    return [
        dataclasses.replace(p, name=n)
        for p, n in zip(site_profiles(cfg.seed, cfg.sites), scanner_names(cfg), strict=True)
    ]


def phantom_settings_hash(cfg: PhantomConfig) -> str:
    """Short hash of everything that determines a phantom cohort's files."""
    settings = dataclasses.asdict(cfg)
    if settings["id_prefix"] == DEFAULT_PREFIX:  # cohorts made before the prefix keep their hash
        del settings["id_prefix"]
    payload = json.dumps({"version": PHANTOM_VERSION, **settings}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def check_phantom_config(cfg: PhantomConfig) -> None:
    """Raise ConfigError for settings no cohort can be made from."""
    if cfg.subjects < 1:
        raise ConfigError("phantom.subjects", f"must be >= 1, got {cfg.subjects}")
    if cfg.sites < 1 or cfg.sites > cfg.subjects:
        raise ConfigError(
            "phantom.sites", f"must be in [1, phantom.subjects={cfg.subjects}], got {cfg.sites}"
        )
    if not 0.5 <= cfg.voxel_size <= 8.0:
        raise ConfigError("phantom.voxel_size", f"must be in [0.5, 8] mm, got {cfg.voxel_size}")
    if not 0.0 <= cfg.healthy_fraction <= 1.0:
        raise ConfigError(
            "phantom.healthy_fraction", f"must be in [0, 1], got {cfg.healthy_fraction}"
        )


def plan_subjects(
    cfg: PhantomConfig, sites: list[SiteProfile], template: Template
) -> list[PhantomSubject]:
    """Who is at which site and who has which tumour; depends only on the settings.

    Site sizes are unequal on purpose (weights from 0.6 to 1.4) so that sites differ in
    size as well as in scanner, and each site gets at least one subject.
    """
    rng = np.random.default_rng([cfg.seed, 0])
    weights = np.linspace(0.6, 1.4, cfg.sites) if cfg.sites > 1 else np.ones(1)
    sizes = _largest_remainder(weights / weights.sum() * cfg.subjects, minimum=1)
    site_of = rng.permutation(np.repeat(np.arange(cfg.sites), sizes))
    n_healthy = int(round(cfg.healthy_fraction * cfg.subjects))
    healthy = set(rng.choice(cfg.subjects, size=n_healthy, replace=False).tolist())
    plan = []
    for i in range(cfg.subjects):
        site = sites[int(site_of[i])]
        tumour = None
        if i not in healthy:
            tumour = sample_tumour(
                np.random.default_rng([cfg.seed, 3, i]),
                template.centres_mm,
                mean_radius_mm=site.mean_radius_mm,
                high_grade_prob=site.high_grade_prob,
            )
        plan.append(PhantomSubject(subject_id(i, cfg.id_prefix), site.name, tumour))
    return plan


def _largest_remainder(quotas: np.ndarray, minimum: int) -> np.ndarray:
    """Integers summing to round(sum(quotas)), each >= minimum, close to ``quotas``."""
    total = int(round(quotas.sum()))
    sizes = np.maximum(np.floor(quotas).astype(int), minimum)
    order = np.argsort(-(quotas - np.floor(quotas)), kind="stable")
    i = 0
    while sizes.sum() < total:
        sizes[order[i % len(order)]] += 1
        i += 1
    while sizes.sum() > total:  # the minimum pushed us over: take from the largest
        sizes[int(np.argmax(sizes))] -= 1
    return sizes


@dataclass
class SubjectVolumes:
    """One generated subject: images int16, labels and tissue uint8, all (X, Y, Z)."""

    images: dict[str, np.ndarray]
    labels: np.ndarray  # internal convention 0..3
    tissue: np.ndarray  # 0 bg, 1 CSF, 2 GM, 3 WM


def generate_subject(
    cfg: PhantomConfig, index: int, subject: PhantomSubject, site: SiteProfile, template: Template
) -> SubjectVolumes:
    """Build one subject's volumes (deterministic for ``cfg.seed`` and ``index``)."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    coords = subject_coordinates(rng, template)
    source = coords if subject.tumour is None else apply_mass_effect(subject.tumour, coords)
    anatomy = sample_anatomy(template, source)
    brain = anatomy.sum(0) > 0.5
    if subject.tumour is None:
        labels = np.zeros(brain.shape, np.uint8)
    else:
        labels = tumour_labels(subject.tumour, coords, anatomy)
    tissue = np.where(brain, anatomy.argmax(0) + 1, 0).astype(np.uint8)
    images = render_contrasts(
        rng, class_fractions(anatomy, labels), brain, site, template.voxel_size
    )
    return SubjectVolumes(images=images, labels=labels, tissue=tissue)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def write_subject(folder: Path, case_id: str, vols: SubjectVolumes, affine: np.ndarray) -> None:
    """Write one subject in BraTS 2021 naming (enhancing stored as 4)."""
    folder.mkdir(parents=True)
    for modality in MODALITIES:
        _save(vols.images[modality], affine, folder / BRATS2021.filename(case_id, modality))
    seg = labels_for_naming(vols.labels, BRATS2021)  # enhancing stored as 4
    _save(seg, affine, folder / BRATS2021.filename(case_id, SEG))
    _save(vols.tissue, affine, folder / f"{case_id}{BRATS2021.separator}tissue.nii.gz")


def manifest_text(rows: list[tuple[str, str, str]]) -> str:
    """manifest.csv content: header subject,scanner_site,split and one row per subject."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def generate_phantom_cohort(out: Path, cfg: PhantomConfig, overwrite: bool = False) -> Path:
    """Generate a phantom cohort into ``out`` (built in a temporary folder, then renamed).

    Raises OutputExistsError if ``out`` exists and not ``overwrite``; ConfigError for
    impossible settings. Returns ``out``.
    """
    check_phantom_config(cfg)
    out = Path(out)
    template = load_template(float(cfg.voxel_size))
    sites = cohort_site_profiles(cfg)
    by_name = {s.name: s for s in sites}
    plan = plan_subjects(cfg, sites, template)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for i, subject in enumerate(plan):
            vols = generate_subject(cfg, i, subject, by_name[subject.scanner_site], template)
            write_subject(tmp / subject.subject, subject.subject, vols, template.grid_affine)
            log.debug("phantom subject %s written", subject.subject)
        rows = [(s.subject, s.scanner_site, "") for s in plan]
        (tmp / MANIFEST).write_text(manifest_text(rows), encoding="utf-8")
        (tmp / METADATA).write_text(_metadata_json(cfg, sites, plan, template), encoding="utf-8")
    return out


def _metadata_json(
    cfg: PhantomConfig, sites: list[SiteProfile], plan: list[PhantomSubject], template: Template
) -> str:
    meta = {
        "generator": "fedsynth phantom",
        "version": PHANTOM_VERSION,
        "settings": dataclasses.asdict(cfg),
        "settings_hash": phantom_settings_hash(cfg),
        "grid_shape": list(template.grid_shape),
        "sites": [s.to_dict() for s in sites],
        "subjects": [
            {
                "subject": s.subject,
                "scanner_site": s.scanner_site,
                "has_tumour": s.tumour is not None,
                "tumour": None if s.tumour is None else s.tumour.to_dict(),
            }
            for s in plan
        ],
    }
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"
