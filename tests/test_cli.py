"""The fedsynth command line: every subcommand has help; overrides work after options."""

import subprocess
import sys

import pytest

from fedsynth.cli import COMMANDS, build_parser, main, parse_args


def test_every_subcommand_has_help(capsys):
    names = [c.replace("_", "-") for c in COMMANDS]
    for name in names:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: fedsynth" in capsys.readouterr().out
    assert set(names) <= set(build_parser()._subparsers._group_actions[0].choices)


def test_overrides_after_options_reach_the_config(tmp_path):
    args = parse_args(
        ["privacy-sweep", "configs/smoke.yaml", "--out", str(tmp_path), "train.steps=3", "seed=2"]
    )
    assert args.config == "configs/smoke.yaml" and args.overrides == ["train.steps=3", "seed=2"]
    args = parse_args(["train", "configs/smoke.yaml", "seed=1", "--out", str(tmp_path), "seed=2"])
    assert args.overrides == ["seed=1", "seed=2"]


def test_unknown_options_are_still_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate-data", "x", "--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_config_errors_exit_2_with_the_key(capsys):
    assert main(["preprocess", "configs/smoke.yaml", "train.stepz=1"]) == 2
    assert "train.stepz" in capsys.readouterr().err


def test_help_loads_no_heavy_library():
    """`fedsynth --help` builds every command's parser without torch, flwr, ray, monai or
    matplotlib: command modules import those inside their run function (cli/__init__.py)."""
    code = (
        "import sys; from fedsynth.cli import build_parser; build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'flwr', 'ray', 'monai', 'matplotlib', 'opacus', 'sklearn', 'nibabel'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
