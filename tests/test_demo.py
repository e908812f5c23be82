"""The main job end to end on the smoke config: every stage writes its outputs; a rerun resumes."""

import json
from pathlib import Path

from fedsynth.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_demo_runs_every_stage_then_resumes_without_redoing_them(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "demo", "--out", str(out), "--config", str(SMOKE),
        f"data.cache_dir={tmp_path / 'cache'}", "synthesis.cases=2",
        "benchmark.arms=[local,pooled,synthetic]",  # the fedavg arm has its own (slow) test
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "epsilon = " in printed and "delta" in printed  # the privacy statement is shown
    fed = out / "federated"
    for path in [
        out / "cohort_preview.png",
        out / "pretrain" / "init.safetensors",
        fed / "privacy.json",
        fed / "checkpoints" / "generator.safetensors",
        out / "synthetic" / "datasheet.json",
        fed / "benchmark" / "results.csv",
        fed / "audit" / "audit.json",
        fed / "report.html",
    ]:
        assert path.is_file() and path.stat().st_size > 0, path
    privacy = json.loads((fed / "privacy.json").read_text())
    assert privacy["unit"] == "patient" and privacy["dp_enabled"]
    assert privacy["worst_epsilon"] <= 10.0
    # The federation started from the public pre-training (smoke: pretrain.enabled).
    assert f"init: {out / 'pretrain' / 'init.safetensors'}" in (fed / "config.yaml").read_text()
    arms = {
        line.split(",")[0]
        for line in (fed / "benchmark" / "results.csv").read_text().splitlines()[1:]
    }
    assert arms == {"local", "pooled", "synthetic"}
    stamp = (fed / "report.html").stat().st_mtime_ns

    assert main(argv) == 0  # resume: every stage is found finished, nothing is redone
    again = capsys.readouterr().out
    assert again.count("done earlier") == 7
    assert (fed / "report.html").stat().st_mtime_ns == stamp
