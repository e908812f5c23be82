"""Privacy audit: the attack statistics on hand-built cases, and `fedsynth audit` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SMOKE
from helpers.tiny_run import TINY_TRAINING

from fedsynth.audit.inputs import released_generator, trained_sites
from fedsynth.audit.membership import (
    bootstrap_auc_ci,
    evaluate_attack,
    pairwise_auc,
    patient_errors,
    tpr_at_fpr,
)
from fedsynth.audit.memorisation import memorisation_audit, nearest
from fedsynth.audit.writer import FILES, run_audit
from fedsynth.cli import main
from fedsynth.common.config import load_config
from fedsynth.common.errors import CheckpointError, ConfigError, OutputExistsError
from fedsynth.common.io.atomic import OUTPUT_MARKER
from fedsynth.common.io.checkpoints import load_checkpoint
from fedsynth.common.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def audited(tiny_run):
    """The tiny run and its audit (written with the default RUN_DIR/audit)."""
    run = tiny_run
    result = run_audit(run.root, resamples=200)
    return run, result


def test_auc_perfect_separation_identical_and_reversed():
    members, nonmembers = np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0])
    assert evaluate_attack(members, nonmembers).auc == 1.0
    assert evaluate_attack(nonmembers, members).auc == 0.0
    same = evaluate_attack(np.full(4, 0.3), np.full(5, 0.3))
    assert same.auc == 0.5
    assert same.auc_ci == (0.5, 0.5)
    assert bootstrap_auc_ci(members, nonmembers, resamples=100) == (1.0, 1.0)


def test_pairwise_auc_equals_sklearn_and_ci_covers_it():
    rng = np.random.default_rng(3)
    m, n = rng.normal(0.5, 1, 30), rng.normal(0, 1, 40)
    m[:3] = n[:3]  # ties count one half
    res = evaluate_attack(m, n, resamples=500)
    assert pairwise_auc(m, n) == pytest.approx(res.auc)
    lo, hi = res.auc_ci
    assert lo < res.auc < hi and lo >= 0.0 and hi <= 1.0
    assert bootstrap_auc_ci(m[:1], n) is None  # one member: no interval


def test_tpr_at_fpr_resolution_rule():
    # 10 non-members: FPR steps of 0.1, so TPR@1% is not measurable.
    res = evaluate_attack(np.arange(10, 20.0), np.arange(10.0))
    t1, t01 = res.tpr_at
    assert not t1["measurable"] and t1["tpr"] is None and "1/10" in t1["note"]
    assert "100" in t1["note"] and not t01["measurable"]
    # 100 non-members: TPR@1% measurable, TPR@0.1% not (needs >= 1000).
    members = np.r_[np.full(5, 1000.0), np.zeros(5)]
    res = evaluate_attack(members, np.arange(100.0) + 1)
    t1, t01 = res.tpr_at
    assert t1["measurable"] and t1["tpr"] == pytest.approx(0.5)
    assert not t01["measurable"] and "1000" in t01["note"]
    # A curve read directly: highest TPR at FPR <= alpha.
    fpr, tpr = np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.1, 0.4, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01, 200)["tpr"] == pytest.approx(0.4)


def test_invalid_attack_inputs_are_refused():
    with pytest.raises(ValueError, match="members and non-members"):
        evaluate_attack(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        evaluate_attack(np.array([np.nan]), np.array([1.0]))


def test_patient_errors_average_slices_per_patient():
    err = patient_errors(np.array([1.0, 3.0, 10.0]), np.array([0, 0, 2]), 3)
    assert err[0] == 2.0 and np.isnan(err[1]) and err[2] == 10.0


def _images(rng, n, size=8):
    return rng.uniform(-1, 1, (n, 4, size, size)).astype(np.float32)


def test_memorisation_flags_a_copied_training_slice():
    rng = np.random.default_rng(0)
    train, held = _images(rng, 20), _images(rng, 12)
    held_patient = np.repeat(np.arange(4), 3)
    fresh = _images(rng, 5)
    synthetic = np.concatenate([train[7:8], fresh])
    mem = memorisation_audit(synthetic, train, held, held_patient)
    assert mem.synthetic.d_train[0] == pytest.approx(0.0, abs=1e-6)
    assert mem.synthetic.i_train[0] == 7 and mem.synthetic.ratio[0] == 0.0
    assert mem.flagged[0] and mem.threshold > 0
    report = mem.to_json()
    assert report["exact_copies"] == 1 and report["synthetic_slices"] == 6
    # A slice that is not a copy has ratio near 1 on random data: not below the 5th pct.
    assert mem.synthetic.ratio[1:].min() > 0.5


def test_nearest_skips_the_query_own_patient():
    rng = np.random.default_rng(1)
    ref = _images(rng, 6)
    group = np.array([0, 0, 1, 1, 2, 2])
    d, i = nearest(ref[:2], ref, query_group=np.array([0, 0]), reference_group=group)
    assert set(i) <= {2, 3, 4, 5} and (d > 0).all()
    d_own, i_own = nearest(ref[:2], ref)
    assert list(i_own) == [0, 1] and np.allclose(d_own, 0, atol=1e-6)
    with pytest.raises(ValueError, match="2 held-out patients"):
        memorisation_audit(ref, ref, ref, np.zeros(6, np.int64))


def test_audit_writes_every_file_and_a_consistent_report(audited):
    run, result = audited
    assert result.out == run.root / "audit"
    for name in FILES:
        assert (result.out / name).is_file() and (result.out / name).stat().st_size > 0, name
    report = json.loads((result.out / "audit.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert set(report["members"]) == {"site-0", "site-1", "site-2"}
    members = {p for ps in report["members"].values() for p in ps}
    assert not members & set(report["nonmembers"]) and report["nonmembers"]
    overall = report["membership"]["overall"]
    assert overall["members"] == len(members) and overall["nonmembers"] == 3
    assert 0 <= overall["auc"] <= 1 and overall["auc_ci95"][0] <= overall["auc"]
    assert all(not t["measurable"] for t in overall["tpr_at_fpr"])  # 3 non-members
    assert set(report["membership"]["member_errors"]) == set(report["members"])
    mo = report["memorisation"]
    assert mo["synthetic_slices"] == mo["reference_slices"] > 0
    assert 0 <= mo["flagged_fraction"] <= 1
    assert report["privacy"]["dp_enabled"] is True and report["threat_model"]
    md = (result.out / "audit.md").read_text()
    assert "## Threat model" in md and "lower bound" in md and "not measurable" in md


def test_audit_cli_refuses_to_overwrite_and_writes_elsewhere(audited, tmp_path, capsys):
    run, _ = audited
    with pytest.raises(OutputExistsError):
        run_audit(run.root)
    assert main(["audit", str(run.root), "--bootstrap", "-1"]) == 2
    assert "--bootstrap" in capsys.readouterr().err
    out = tmp_path / "elsewhere"
    assert main(["audit", str(run.root), "--out", str(out), "--bootstrap", "50"]) == 0
    assert "membership AUC" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, OUTPUT_MARKER])


def test_audit_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match="config.yaml"):
        run_audit(tmp_path)


def test_members_follow_the_run_kind(tmp_path):
    sites = {"site-0": ["a"], "site-1": ["b"], "site-2": ["c"]}
    cfg = load_config(None, [])
    assert trained_sites(cfg, sites, False, {}) == ["site-0", "site-1", "site-2"]
    one = load_config(None, ["train.site=site-1"])
    assert trained_sites(one, sites, False, {"sites": {"central": {}}}) == ["site-1"]
    fed = {"sites": {"site-0": {}, "site-2": {}}}
    assert trained_sites(cfg, sites, True, fed) == ["site-0", "site-2"]
    with pytest.raises(ConfigError, match="train.site"):
        trained_sites(load_config(None, ["train.site=site-9"]), sites, False, {})
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    with pytest.raises(CheckpointError, match="no generator checkpoint"):
        released_generator(tmp_path)
    for name in ("generator_0000002.safetensors", "generator_0000010.safetensors"):
        (ckpts / name).write_bytes(b"x")
    assert released_generator(tmp_path).name == "generator_0000010.safetensors"
    (ckpts / "generator.safetensors").write_bytes(b"x")  # the federated server's copy
    assert released_generator(tmp_path).name == "generator.safetensors"


def test_train_cli_releases_the_latest_generator_and_prints_its_path(audited, tmp_path, capsys):
    """`fedsynth train` leaves checkpoints/generator.safetensors (the newest generator, what
    docs/synthesis.md tells users to load) and prints where it is."""
    run, _ = audited
    cache = run.read_config().data.cache_dir  # the tiny run's cohort and slice caches: reused
    out = tmp_path / "run"
    code = main(["train", str(SMOKE), "--out", str(out), "--no-progress",
                 f"data.cache_dir={cache}", *TINY_TRAINING])  # fmt: skip
    assert code == 0
    released = RunDir(out).generator
    printed = capsys.readouterr().out.splitlines()  # the summary: "  generator  <path>"
    assert any(line.split() == ["generator", str(released)] for line in printed), printed
    assert released.read_bytes() == RunDir(out).generator_checkpoint(2).read_bytes()
    assert load_checkpoint(released).step == 2
