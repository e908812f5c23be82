"""The phantom cohort: layout, labels, determinism, and contrasts that make it a fair test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedsynth.common.config import PhantomConfig
from fedsynth.common.data import brats
from fedsynth.common.data.phantom import generate_phantom_cohort
from fedsynth.common.errors import ConfigError, OutputExistsError

TINY = PhantomConfig(subjects=6, sites=2, voxel_size=4.0, healthy_fraction=0.34, seed=3)
FILES = ("t1", "t1ce", "t2", "flair", "seg", "tissue")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom_cohort(tmp_path_factory.mktemp("ph") / "cohort", TINY)


def _load(cohort: Path, subject: str, suffix: str) -> np.ndarray:
    return np.asanyarray(nib.load(cohort / subject / f"{subject}_{suffix}.nii.gz").dataobj)


def _subjects(cohort: Path) -> list[str]:
    with open(cohort / "manifest.csv", newline="") as f:
        return [row["subject"] for row in csv.DictReader(f)]


def test_brats2021_layout_and_manifest(cohort: Path) -> None:
    with open(cohort / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["subject", "scanner_site", "split"]
    assert len(rows) == TINY.subjects
    assert {r["scanner_site"] for r in rows} == {"scanner-0", "scanner-1"}
    assert all(r["split"] == "" for r in rows)
    cases = brats.discover_cases(cohort)
    assert [c.case_id for c in cases] == [r["subject"] for r in rows]
    for case in cases:
        assert case.naming is brats.BRATS2021 and not case.missing_modalities
        assert case.seg is not None and case.tissue is not None
        shapes = {nib.load(case.folder / f"{case.case_id}_{s}.nii.gz").shape for s in FILES}
        assert len(shapes) == 1 and len(shapes.pop()) == 3


def test_label_values_on_disk(cohort: Path) -> None:
    seen: set[int] = set()
    for subject in _subjects(cohort):
        seg = _load(cohort, subject, "seg")
        tissue = _load(cohort, subject, "tissue")
        assert seg.dtype == np.uint8 and tissue.dtype == np.uint8
        assert set(np.unique(seg)) <= {0, 1, 2, 4}  # BraTS 2021: enhancing stored as 4
        assert set(np.unique(tissue)) <= {0, 1, 2, 3}
        assert not (seg > 0)[tissue == 0].any()  # tumour only inside the brain
        seen |= set(np.unique(seg).tolist())
    assert {1, 2, 4} <= seen


def test_healthy_subjects_as_configured(cohort: Path) -> None:
    meta = json.loads((cohort / "phantom.json").read_text())
    has_tumour = {s["subject"]: s["has_tumour"] for s in meta["subjects"]}
    for subject in _subjects(cohort):
        assert _load(cohort, subject, "seg").any() == has_tumour[subject]
    assert sum(not v for v in has_tumour.values()) == round(TINY.healthy_fraction * TINY.subjects)
    all_sick = PhantomConfig(subjects=2, sites=1, voxel_size=4.0, healthy_fraction=0.0)
    assert all(s.tumour is not None for s in _plan(all_sick))


def _plan(cfg: PhantomConfig):
    from fedsynth.common.data.phantom import plan_subjects
    from fedsynth.common.data.phantom_anatomy import load_template
    from fedsynth.common.data.phantom_mri import site_profiles

    return plan_subjects(cfg, site_profiles(cfg.seed, cfg.sites), load_template(cfg.voxel_size))


def test_same_seed_identical_files_other_seed_differs(cohort: Path, tmp_path: Path) -> None:
    cfg = PhantomConfig(subjects=2, sites=2, voxel_size=4.0, healthy_fraction=0.0, seed=3)
    a = generate_phantom_cohort(tmp_path / "a", cfg)
    b = generate_phantom_cohort(tmp_path / "b", cfg)
    c = generate_phantom_cohort(tmp_path / "c", PhantomConfig(**{**cfg.__dict__, "seed": 4}))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * len(FILES) + 3  # + the .fedsynth-output marker
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / files[-1]).read_bytes() != (c / files[-1]).read_bytes()


def _means(image: np.ndarray, mask: np.ndarray) -> float:
    assert mask.sum() >= 3
    return float(image[mask].mean())


def test_tissue_contrasts_like_real_scans(cohort: Path) -> None:
    """T1: WM > GM > CSF; T2: CSF brightest; FLAIR: CSF darkest (outside the tumour)."""
    for subject in _subjects(cohort):
        healthy = _load(cohort, subject, "seg") == 0
        tissue = _load(cohort, subject, "tissue")
        csf, gm, wm = ((tissue == k) & healthy for k in (1, 2, 3))
        t1, t2, flair = (_load(cohort, subject, m).astype(float) for m in ("t1", "t2", "flair"))
        assert _means(t1, wm) > _means(t1, gm) > _means(t1, csf)
        assert _means(t2, csf) > _means(t2, gm) > _means(t2, wm)
        assert _means(flair, csf) < min(_means(flair, gm), _means(flair, wm))


def test_tumour_regions_need_several_contrasts(cohort: Path) -> None:
    """Enhancing rim bright on T1c only; necrosis dark on T1c; oedema bright on T2 and FLAIR."""
    checked = 0
    for subject in _subjects(cohort):
        seg = _load(cohort, subject, "seg")
        enhancing, oedema, necrotic = seg == 4, seg == 2, seg == 1
        if not enhancing.any() or not oedema.any():
            continue
        wm = (_load(cohort, subject, "tissue") == 3) & (seg == 0)
        img = {m: _load(cohort, subject, m).astype(float) for m in ("t1", "t1ce", "t2", "flair")}
        assert _means(img["t1ce"], enhancing) > _means(img["t1ce"], oedema)
        assert _means(img["t1ce"], enhancing) > _means(img["t1ce"], wm)
        assert _means(img["t1"], enhancing) < _means(img["t1"], wm)  # no contrast agent
        if necrotic.sum() >= 3:
            assert _means(img["t1ce"], necrotic) < _means(img["t1ce"], enhancing)
        for m in ("t2", "flair"):
            assert _means(img[m], oedema) > _means(img[m], wm)
        checked += 1
    assert checked >= 1


def test_load_case_reads_phantoms_in_internal_convention(cohort: Path) -> None:
    from fedsynth.common.data.validate import load_case

    case = brats.find_case(cohort / _subjects(cohort)[0])
    loaded = load_case(case)
    assert set(loaded.images) == set(brats.MODALITIES)
    assert loaded.seg is not None and loaded.seg.max() <= 3
    assert loaded.tissue is not None


def test_preview_png(cohort: Path, tmp_path: Path) -> None:
    from fedsynth.common.data.preview import preview_cohort

    png = preview_cohort(cohort, tmp_path / "p.png", n_subjects=3)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 1_000 < len(data) < 300_000


def test_sites_differ_in_scanner_and_size(cohort: Path) -> None:
    sites = json.loads((cohort / "phantom.json").read_text())["sites"]
    assert len({s["noise"] for s in sites}) == len(sites)
    assert len({tuple(s["blur_vox"]) for s in sites}) == len(sites)
    plan = _plan(PhantomConfig(subjects=40, sites=4, voxel_size=4.0))
    sizes = sorted(sum(p.scanner_site == f"scanner-{k}" for p in plan) for k in range(4))
    assert sum(sizes) == 40 and sizes[0] < sizes[-1]


def test_cli_writes_and_refuses_existing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fedsynth.cli import main

    out = tmp_path / "cli"
    args = ["phantoms", "--out", str(out), "--subjects", "2", "--sites", "2",
            "--voxel-size", "4", "--preview-subjects", "1"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "scanner-0: 1 subjects" in printed
    assert (out / "preview.png").is_file()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="phantom.sites"):
        generate_phantom_cohort(tmp_path / "x", PhantomConfig(subjects=2, sites=3))
    (tmp_path / "y").mkdir()
    with pytest.raises(OutputExistsError):
        generate_phantom_cohort(tmp_path / "y", PhantomConfig(subjects=1, sites=1, voxel_size=6))
