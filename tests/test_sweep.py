"""Privacy sweep: budget parsing, per-budget configs, and the summary table from real files."""

import json
import math

import pytest

from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError
from fedsynth.common.rundir import DONE_FILE as DONE
from fedsynth.sweep.budgets import budget_config, label, parse_epsilons
from fedsynth.sweep.summary import arm_dice, markdown, write_summary


def test_parse_epsilons():
    assert parse_epsilons("inf, 50,2.5") == [math.inf, 50.0, 2.5]
    for bad in ("10,-1", "ten", "5,5", "0"):
        with pytest.raises(ConfigError, match="--epsilons"):
            parse_epsilons(bad)


def test_budget_config_switches_dp_and_keeps_everything_else():
    base = load_config(None, ["privacy.target_epsilon=3", "federation.rounds=4"])
    off = budget_config(base, math.inf)
    assert off.privacy.enabled is False and off.federation.rounds == 4
    on = budget_config(base, 7.0)
    assert on.privacy.enabled and on.privacy.target_epsilon == 7.0
    assert (label(math.inf), label(7.0), label(2.5)) == ("inf", "7", "2.5")


def _results(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["arm,site,seed,region,metric,value"] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _budget(out, eps, dice, auc, dp=True):
    run = out / f"eps-{label(eps)}"
    rows = []
    for seed, d in enumerate(dice):  # two seeds: the table must show their mean
        for region in ("WT", "TC", "ET"):
            rows += [("synthetic", "all", seed, region, "dice", d)]
            rows += [("local+synthetic", "mean", seed, region, "dice", d + 0.1)]
            rows += [("local+synthetic", "site-0", seed, region, "dice", 0.0)]  # not a summary row
            rows += [("synthetic", "all", seed, region, "hd95", 9.0)]
    _results(run / "benchmark" / "results.csv", rows)
    metrics = [
        {"kind": "round", "round": 1, "mean": {"mae": 0.5, "ssim": 0.1}},
        {"kind": "site", "round": 2},
        {"kind": "round", "round": 2, "mean": {"mae": 0.2, "ssim": 0.6}},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
    done = {"worst_epsilon": None if not dp else eps * 0.99, "delta": 1e-5, "dp_enabled": dp,
            "membership_auc": auc}  # fmt: skip
    (run / DONE).write_text(json.dumps(done))


def test_summary_table_and_plots_from_run_files(tmp_path):
    _budget(tmp_path, math.inf, [0.6, 0.8], 0.7, dp=False)
    _budget(tmp_path, 5.0, [0.2, 0.4], 0.5)
    _results(
        tmp_path / "baselines" / "benchmark" / "results.csv",
        [("local", "mean", 0, "WT", "dice", 0.5), ("pooled", "all", 0, "WT", "dice", 0.9)],
    )
    table = write_summary(tmp_path, [math.inf, 5.0])
    csv_lines = (tmp_path / "sweep.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    inf_row = dict(zip(header, csv_lines[1].split(","), strict=True))
    five_row = dict(zip(header, csv_lines[2].split(","), strict=True))
    assert inf_row["worst_epsilon"] == "inf" and inf_row["delta"] == ""
    assert float(inf_row["synthetic_dice_WT"]) == pytest.approx(0.7)
    assert float(inf_row["local+synthetic_dice_ET"]) == pytest.approx(0.8)
    assert float(five_row["synthetic_dice_TC"]) == pytest.approx(0.3)
    assert float(five_row["worst_epsilon"]) == pytest.approx(4.95)
    assert float(five_row["mae"]) == pytest.approx(0.2)  # the last round, not the first
    text = table.read_text()
    assert "infinity (no DP)" in text and "pooled: Dice WT 0.900" in text
    assert (tmp_path / "plots" / "dice_vs_epsilon.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "quality_and_leakage_vs_epsilon.png").stat().st_size > 1000


def test_arm_dice_ignores_per_site_rows(tmp_path):
    path = tmp_path / "r.csv"
    _results(
        path, [("local", "site-0", 0, "WT", "dice", 0.0), ("local", "mean", 0, "WT", "dice", 0.4)]
    )
    assert arm_dice(path) == {"local": {"WT": 0.4}}
    assert "local: Dice WT 0.400" in markdown([], arm_dice(path))
