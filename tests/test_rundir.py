"""The run-folder layout (fedsynth.common.rundir): what each reader finds, what it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import fedsynth
from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.errors import (
    CheckpointError,
    ConfigError,
    ForeignFolderError,
    OutputExistsError,
)
from fedsynth.common.io.atomic import mark_output
from fedsynth.common.rundir import (
    CONFIG_FILE,
    GENERATOR_FILE,
    LATEST_FILE,
    METRICS_FILE,
    PRIVACY_FILE,
    SERVER_STATE_FILE,
    DemoDir,
    RunDir,
    SweepDir,
    clear_for_new_output,
    find_run_dir,
    finite_json,
)


def test_create_writes_the_config_and_refuses_a_used_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create(Config(name="a"))
    assert run.read_config().name == "a"
    assert run.checkpoints.is_dir() and run.samples.is_dir() and run.plots.is_dir()
    with pytest.raises(OutputExistsError):
        run.create(Config(name="b"))
    run.create(Config(name="b"), overwrite=True)
    assert run.read_config().name == "b"


def test_read_config_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ConfigError, match="config.yaml.*missing"):
        run.read_config()
    run.config.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="config.yaml.*unreadable"):
        run.read_config()
    run.config.write_text("train:\n  steps: -3\n")
    with pytest.raises(ConfigError, match="config.yaml.*invalid"):
        run.read_config()


def test_released_generator_prefers_the_published_copy(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(CheckpointError, match="no generator checkpoint"):
        run.released_generator()
    run.checkpoints.mkdir()
    for step in (2, 4):
        run.generator_checkpoint(step).write_bytes(f"g{step}".encode())
    assert run.released_generator() == run.generator_checkpoint(4)  # the newest file
    run.mark_latest(2)
    assert run.released_generator() == run.generator_checkpoint(2)  # what latest.json names
    assert run.latest_step() == 2
    run.publish_generator(run.generator_checkpoint(4))
    assert run.released_generator() == run.generator
    assert run.generator.read_bytes() == b"g4"


def test_latest_step_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        RunDir(tmp_path).latest_step()


def test_metrics_round_trip_with_nulls_and_truncation(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.append_metrics({"step": step, "epsilon": math.inf if step == 1 else 1.0 * step})
    with open(run.metrics, "a") as f:
        f.write('{"step": 4, "cut by a cra')  # a line a crash left behind
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["epsilon"] is None
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_finite_json_nests():
    assert finite_json({"a": [1.0, math.nan, {"b": -math.inf}]}) == {"a": [1.0, None, {"b": None}]}


def test_readers_of_optional_files(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_privacy() is None and run.read_server_state() is None
    assert not run.is_federated()
    run.server_state.write_text(json.dumps({"round": 1}))
    run.privacy.write_text("{not json")
    assert run.is_federated() and run.read_server_state() == {"round": 1}
    assert run.read_privacy() is None


def test_find_run_dir_looks_two_levels_up(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    ckpt = run.generator_checkpoint(1)
    ckpt.write_bytes(b"")
    assert find_run_dir(ckpt) is None
    run.config.write_text(config_to_yaml(Config()))
    assert find_run_dir(ckpt) == run.root.resolve()
    assert find_run_dir(tmp_path / "elsewhere.safetensors") is None


def test_clear_for_new_output(tmp_path):
    clear_for_new_output(tmp_path / "absent", overwrite=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        clear_for_new_output(tmp_path / "used", overwrite=False)
    with pytest.raises(ForeignFolderError, match="used"):  # not a folder fedsynth made
        clear_for_new_output(tmp_path / "used", overwrite=True)
    mark_output(tmp_path / "used")
    clear_for_new_output(tmp_path / "used", overwrite=True)
    assert not (tmp_path / "used").exists()


def test_sweep_and_demo_folders_hold_training_runs(tmp_path):
    sweep = SweepDir(tmp_path)
    assert sweep.budget("inf").root == tmp_path / "eps-inf"
    assert SweepDir.done(sweep.baselines) == tmp_path / "baselines" / "done.json"
    demo = DemoDir(tmp_path)
    assert (
        demo.federated.generator == tmp_path / "federated" / "checkpoints" / "generator.safetensors"
    )
    assert demo.stage_marker("cohort") == tmp_path / "stages" / "cohort.json"


def test_run_folder_and_site_names_are_spelled_in_one_module_each():
    """Agreements with one owner: the run folder's file names live in common/rundir.py and
    the site-name format in common/sites.py; every other module asks them."""
    package = Path(fedsynth.__file__).parent
    owned = {
        "common/rundir.py": [f'"{n}"' for n in (CONFIG_FILE, PRIVACY_FILE, METRICS_FILE,
                                                SERVER_STATE_FILE, GENERATOR_FILE, LATEST_FILE)],
        "common/sites.py": ['f"site-{', "r\"site-", "r'site-", '"site-"'],
    }  # fmt: skip
    offenders = [
        f"{path.relative_to(package)}: {needle}"
        for owner, needles in owned.items()
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).as_posix() != owner
        for needle in needles
        if needle in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
