"""Site splits and cohort resolution: determinism, disjointness, policies, manifest errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.synthetic_brain import write_case

from fedsynth.common.config import SplitConfig, load_config
from fedsynth.common.data import cohort as cohort_mod
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.data.splits import Split, make_split
from fedsynth.common.errors import ConfigError, DataError

IDS = [f"case{i:03d}" for i in range(40)]
TUMOUR = {s: i % 5 != 0 for i, s in enumerate(IDS)}  # 8 healthy subjects


def _check_partition(split: Split, ids: list[str], sites: int) -> None:
    assigned = split.test + [s for g in split.sites.values() for s in g]
    assert sorted(assigned) == sorted(ids)  # every subject exactly once
    assert len(assigned) == len(set(assigned))
    assert list(split.sites) == [f"site-{k}" for k in range(sites)]
    assert all(split.sites.values())


@pytest.mark.parametrize("policy", ["iid", "dirichlet"])
def test_deterministic_disjoint_complete(policy: str) -> None:
    cfg = SplitConfig(policy=policy, sites=4, test_fraction=0.2, alpha=0.5, seed=1)
    a = make_split(IDS, cfg, has_tumour=TUMOUR)
    assert a == make_split(list(reversed(IDS)), cfg, has_tumour=TUMOUR)  # order-independent
    _check_partition(a, IDS, 4)
    assert len(a.test) == 8
    other = make_split(IDS, SplitConfig(policy=policy, sites=4, seed=2), has_tumour=TUMOUR)
    assert other.test != a.test


def test_test_split_is_stratified_and_has_tumours() -> None:
    few_tumours = {s: i < 3 for i, s in enumerate(IDS)}
    for seed in range(5):
        split = make_split(IDS, SplitConfig(policy="iid", seed=seed), has_tumour=few_tumours)
        assert any(few_tumours[s] for s in split.test)
        balanced = make_split(IDS, SplitConfig(policy="iid", seed=seed), has_tumour=TUMOUR)
        assert sum(TUMOUR[s] for s in balanced.test) == round(8 * 32 / 40)


def test_iid_sizes_differ_by_at_most_one() -> None:
    split = make_split(IDS, SplitConfig(policy="iid", sites=3), has_tumour=TUMOUR)
    sizes = [len(g) for g in split.sites.values()]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def spread(alpha: float) -> float:
        cvs = []
        for seed in range(10):
            cfg = SplitConfig(policy="dirichlet", sites=4, alpha=alpha, seed=seed)
            sizes = np.array([len(g) for g in make_split(IDS, cfg).sites.values()])
            assert sizes.min() >= 2 and sizes.sum() == 32
            cvs.append(sizes.std() / sizes.mean())
        return float(np.mean(cvs))

    assert spread(0.1) > 2 * spread(100.0)


def test_by_site_keeps_sites_together_in_natural_order() -> None:
    site_of = {s: f"scanner-{[2, 10, 7][i % 3]}" for i, s in enumerate(IDS)}
    split = make_split(IDS, SplitConfig(policy="by-site", sites=3), site_of=site_of)
    _check_partition(split, IDS, 3)
    expected = {"site-0": "scanner-2", "site-1": "scanner-7", "site-2": "scanner-10"}
    for site, subjects in split.sites.items():
        assert {site_of[s] for s in subjects} == {expected[site]}
    assert len({site_of[s] for s in split.test}) == 3  # test drawn from every site


def test_policy_errors_name_the_key() -> None:
    site_of = {s: f"scanner-{i % 2}" for i, s in enumerate(IDS)}
    with pytest.raises(ConfigError, match="split.sites.*set split.sites=2"):
        make_split(IDS, SplitConfig(policy="by-site", sites=3), site_of=site_of)
    with pytest.raises(ConfigError, match="split.site_csv"):
        make_split(IDS, SplitConfig(policy="by-site", sites=2), site_of={})
    with pytest.raises(ConfigError, match="split.sites"):
        make_split(IDS[:10], SplitConfig(policy="dirichlet", sites=5))


# --- cohorts on disk -----------------------------------------------------------------------


def _user_cohort(root: Path, n: int = 10) -> Path:
    """Valid subject folders (small synthetic brains), tumour in every other subject."""
    for i in range(n):
        write_case(root, f"sub{i:02d}", tumour=i % 2 == 0, seed=i)
    return root


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [f"data.cache_dir={tmp_path / 'cache'}", *overrides])


def _cohort_cfg(tmp_path: Path, base: Path, *overrides: str):
    return _cfg(tmp_path, "data.source=cohort", f"data.cohort_dir={base}", *overrides)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_user_cohort_split_goes_to_the_cache_never_the_data_folder(tmp_path: Path) -> None:
    base = _user_cohort(tmp_path / "cohort")
    before = _tree(base)
    cfg = _cohort_cfg(
        tmp_path, base, "split.policy=iid", "split.sites=2", "split.test_fraction=0.2"
    )
    view = resolve_cohort(cfg)
    assert view.parent == (tmp_path / "cache" / "splits").resolve()
    assert _tree(base) == before  # nothing written, nothing touched
    assert not (base / "manifest.csv").exists() and not (base / "split.json").exists()
    split = load_split(view)
    _check_partition(split, [f"sub{i:02d}" for i in range(10)], 2)
    assert len(split.test) == 2 and any(int(s[3:]) % 2 == 0 for s in split.test)
    with open(view / "manifest.csv", newline="") as f:
        assert csv.DictReader(f).fieldnames == ["subject", "scanner_site", "split"]
    first = (view / "manifest.csv").read_bytes()
    assert resolve_cohort(cfg) == view and (view / "manifest.csv").read_bytes() == first
    assert (view / "sub00" / "sub00_seg.nii.gz").is_file()


def test_by_site_from_site_csv(tmp_path: Path) -> None:
    base = _user_cohort(tmp_path / "cohort")
    sites = tmp_path / "sites.csv"
    sites.write_text("subject,site\n" + "".join(f"sub{i:02d},h{i % 2}\n" for i in range(10)))
    cfg = _cohort_cfg(
        tmp_path, base, "split.policy=by-site", "split.sites=2", f"split.site_csv={sites}"
    )
    split = load_split(resolve_cohort(cfg))
    assert {int(s[3:]) % 2 for s in split.sites["site-0"]} == {0}
    assert {int(s[3:]) % 2 for s in split.sites["site-1"]} == {1}
    sites.write_text("subject,site\nsub00,h0\n")
    with pytest.raises(DataError, match="sites.csv.*no site for 9"):
        resolve_cohort(cfg)


def test_manifest_naming_missing_subjects_is_an_error(tmp_path: Path) -> None:
    base = _user_cohort(tmp_path / "cohort", n=4)
    (base / "manifest.csv").write_text("subject,scanner_site,split\nsub00,,\nghost,,test\n")
    cfg = _cohort_cfg(tmp_path, base, "split.policy=iid", "split.sites=1")
    with pytest.raises(DataError, match=r"manifest\.csv.*ghost"):
        resolve_cohort(cfg)
    with pytest.raises(DataError, match=r"manifest\.csv.*ghost"):
        load_split(base)
    (base / "manifest.csv").write_text(
        "subject,scanner_site,split\n" + "".join(f"sub{i:02d},,\n" for i in range(4))
    )
    with pytest.raises(DataError, match=r"manifest\.csv.*has split ''"):
        load_split(base)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def test_invalid_cases_are_validated_out_before_the_split(tmp_path: Path) -> None:
    """strict=false: a truncated label map and a missing image are skipped, not split."""
    base = _user_cohort(tmp_path / "cohort", n=8)
    _truncate(base / "sub02" / "sub02_seg.nii.gz")
    (base / "sub05" / "sub05_flair.nii.gz").unlink()
    cfg = _cohort_cfg(tmp_path, base, "data.strict=false", "split.policy=iid", "split.sites=2",
                      "split.test_fraction=0.2")  # fmt: skip
    view = resolve_cohort(cfg)
    split = load_split(view)
    _check_partition(split, [f"sub{i:02d}" for i in (0, 1, 3, 4, 6, 7)], 2)
    skipped = cohort_mod.skipped_cases(view)
    assert sorted(skipped) == ["sub02", "sub05"]
    assert "sub02_seg.nii.gz" in skipped["sub02"][0] and "truncated" in skipped["sub02"][0]
    assert "missing FLAIR" in skipped["sub05"][0]
    run = tmp_path / "run"
    run.mkdir()
    written = cohort_mod.record_skipped(view, run)
    assert json.loads(written.read_text())["skipped"] == skipped
    _truncate(base / "sub03" / "sub03_t1.nii.gz")  # a changed file makes a new split
    assert "sub03" in cohort_mod.skipped_cases(resolve_cohort(cfg))


def test_strict_lists_every_problem_of_every_case(tmp_path: Path) -> None:
    base = _user_cohort(tmp_path / "cohort", n=6)
    _truncate(base / "sub01" / "sub01_seg.nii.gz")
    (base / "sub04" / "sub04_t2.nii.gz").unlink()
    (base / "sub04" / "sub04_t1.nii.gz").write_bytes(b"not a nifti")
    cfg = _cohort_cfg(tmp_path, base, "split.policy=iid", "split.sites=2")
    with pytest.raises(DataError) as err:
        resolve_cohort(cfg)
    message = str(err.value)
    assert "2 of 6 cases failed validation" in message
    for name in ("sub01_seg.nii.gz", "sub04_t2.nii.gz", "sub04_t1.nii.gz"):
        assert name in message
    assert not (tmp_path / "cache" / "splits").exists() or not any(
        (tmp_path / "cache" / "splits").glob("*/manifest.csv")
    )


def test_phantom_generated_once_and_split_by_scanner(tmp_path: Path, monkeypatch) -> None:
    common = ["phantom.subjects=6", "phantom.sites=2", "phantom.voxel_size=4.0",
              "phantom.healthy_fraction=0.2", "split.sites=2"]  # fmt: skip
    cfg = _cfg(tmp_path, *common, "split.policy=by-site")
    view = resolve_cohort(cfg)
    split = load_split(view)
    _check_partition(split, [f"phantom_{i:04d}" for i in range(6)], 2)
    with open(view / "manifest.csv", newline="") as f:
        scanner = {r["subject"]: r["scanner_site"] for r in csv.DictReader(f)}
    for k, subjects in enumerate(split.sites.values()):
        assert {scanner[s] for s in subjects} == {f"scanner-{k}"}

    def fail(*args, **kwargs):
        raise AssertionError("the cached phantom cohort should have been reused")

    monkeypatch.setattr(cohort_mod, "generate_phantom_cohort", fail)
    assert resolve_cohort(cfg) == view
    iid = resolve_cohort(_cfg(tmp_path, *common, "split.policy=iid"))
    assert iid != view and load_split(view) == split  # other split, own manifest
    assert len(list((tmp_path / "cache" / "phantoms").iterdir())) == 1


def test_losing_the_creation_race_keeps_the_winner(tmp_path: Path) -> None:
    final, ours = tmp_path / "final", tmp_path / "ours"
    final.mkdir()
    (final / "a").write_text("winner")
    ours.mkdir()
    (ours / "a").write_text("loser")
    cohort_mod._publish(ours, final)
    assert (final / "a").read_text() == "winner"
