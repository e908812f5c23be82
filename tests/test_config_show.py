"""`fedsynth config show`: the resolved configuration, every key, readable back."""

from __future__ import annotations

from pathlib import Path

from fedsynth.cli import main
from fedsynth.common.config import Config, config_to_dict, load_config

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_config_show_prints_defaults_file_and_overrides_resolved(tmp_path, capsys):
    assert main(["config", "show", str(SMOKE), "train.steps=3", "privacy.delta=1e-6"]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    resolved = load_config(shown)
    expected = load_config(SMOKE, ["train.steps=3", "privacy.delta=1e-6"])
    assert config_to_dict(resolved) == config_to_dict(expected)
    assert resolved.train.steps == 3 and resolved.name == "smoke"  # override, then the file
    text = shown.read_text()
    assert "p_remove:" in text and "round_timeout_s:" in text  # keys smoke.yaml leaves default


def test_config_show_without_a_file_prints_the_defaults(tmp_path, capsys):
    assert main(["config", "show"]) == 0
    shown = tmp_path / "defaults.yaml"
    shown.write_text(capsys.readouterr().out)
    assert config_to_dict(load_config(shown)) == config_to_dict(Config())


def test_config_show_names_an_unknown_key(capsys):
    assert main(["config", "show", str(SMOKE), "train.stepz=3"]) == 2
    assert "train.stepz" in capsys.readouterr().err
