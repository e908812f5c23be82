"""Hostile and careless input (issue 16): --overwrite deletes only fedsynth's own folders,
configs cannot smuggle in inf/nan, OS errors are one line naming the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsynth.cli import main
from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError, ForeignFolderError
from fedsynth.common.io.atomic import OUTPUT_MARKER, atomic_directory, remove_output
from fedsynth.common.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


# --------------------------------------------------------------------------- --overwrite


def _users_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    return folder


def test_simulate_overwrite_with_a_misspelt_key_keeps_the_users_folder(tmp_path, capsys):
    folder = _users_folder(tmp_path)
    code = main(
        ["simulate", str(SMOKE), "--out", str(folder), "--overwrite", "federation.roudns=1"]
    )
    assert code == 2 and "roudns" in capsys.readouterr().err
    assert (folder / "chapter1.tex").read_text() == "years of work"


def test_simulate_overwrite_with_a_valid_config_refuses_a_folder_fedsynth_did_not_make(
    tmp_path, capsys
):
    folder = _users_folder(tmp_path)
    code = main(["simulate", str(SMOKE), "--out", str(folder), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and str(folder) in err and "not an output folder fedsynth made" in err
    assert len(err.strip().splitlines()) == 1
    assert (folder / "chapter1.tex").read_text() == "years of work"


def test_train_overwrite_replaces_only_a_run_folder(tmp_path, capsys):
    folder = _users_folder(tmp_path)
    assert main(["train", str(SMOKE), "--out", str(folder), "--overwrite"]) == 2
    assert (folder / "chapter1.tex").exists()
    run = tmp_path / "run"
    RunDir(run).create(load_config(SMOKE))
    (run / "stale.txt").write_text("old run output")
    assert (run / OUTPUT_MARKER).is_file()
    RunDir(run).create(load_config(SMOKE), overwrite=True)
    assert not (run / "stale.txt").exists() and (run / "config.yaml").is_file()


def test_atomic_directory_overwrites_only_marked_folders(tmp_path):
    folder = _users_folder(tmp_path)
    with (
        pytest.raises(ForeignFolderError, match="thesis"),
        atomic_directory(folder, overwrite=True),
    ):
        pytest.fail("must refuse before the work starts")
    assert (folder / "chapter1.tex").exists()
    out = tmp_path / "cohort"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "b.txt"]


def test_remove_output_refuses_files_and_symlinks(tmp_path):
    target = _users_folder(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    (target / OUTPUT_MARKER).write_text("")  # marked target, but --out named a link to it
    for path in (link, target / "chapter1.tex"):
        with pytest.raises(ForeignFolderError):
            remove_output(path)
    assert (target / "chapter1.tex").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    remove_output(empty)
    assert not empty.exists()


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "override",
    [
        "privacy.max_grad_norm=inf",
        "train.lr=inf",
        "train.lr=nan",
        "privacy.target_epsilon=inf",
        "privacy.delta=nan",
        "federation.round_timeout_s=inf",
        "synthesis.max_shift_mm=nan",
        "benchmark.lr=-inf",
    ],
)
def test_non_finite_values_are_refused_by_name(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}': must be a finite number"):
        load_config(SMOKE, [override])


def test_train_with_inf_lr_exits_non_zero_before_training(tmp_path, capsys):
    code = main(["train", str(SMOKE), "--out", str(tmp_path / "run"), "train.lr=inf"])
    assert code == 2 and "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
