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


# --------------------------------------------------------------------------- OS errors


def _phantoms(out: Path) -> list[str]:
    return ["phantoms", "--subjects", "2", "--sites", "1", "--voxel-size", "4", "--out", str(out)]


def _one_line_naming(err: str, path: Path | str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0], err


def test_output_under_a_file_is_one_line_naming_the_path(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "cohort"
    assert main(_phantoms(out)) == 2
    err = capsys.readouterr().err
    _one_line_naming(err, out)
    assert "a file stands where a folder is needed" in err


def test_read_only_folder_is_one_line_naming_the_path(capsys):
    out = Path("/sys/fedsynth-probe")  # sysfs refuses new entries, even to root
    assert main(_phantoms(out)) == 2
    err = capsys.readouterr().err
    _one_line_naming(err, out)
    assert "no write permission" in err


def test_disk_full_is_one_line_naming_the_path(tmp_path):
    """A file size limit of 4 KiB (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk
    they fail with ENOSPC) while the phantom cohort is written."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "cohort"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsynth", *_phantoms(out)],
        capture_output=True, text=True, preexec_fn=limit, cwd=REPO, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    _one_line_naming(proc.stderr, out)
    assert "disk full" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".cohort.*"))  # nothing half-written


# --------------------------------------------------------------------------- checkpoints


def _forged_checkpoint(path: Path, model: dict, image_size: object) -> Path:
    """The smoke generator's real weights (~170 KB) under metadata that claims ``model``,
    with the matching config hash (anyone can compute it)."""
    from dataclasses import asdict

    import torch

    from fedsynth.common.config import ModelConfig
    from fedsynth.common.io.checkpoints import save_checkpoint
    from fedsynth.common.models.registry import architecture_hash, build_generator

    cfg = load_config(SMOKE)
    weights = build_generator(cfg.model).state_dict()
    claimed = {**asdict(cfg.model), **model}
    try:
        digest = architecture_hash(ModelConfig(**claimed))
    except TypeError:
        digest = "0" * 16
    extra = {"model": claimed, "image_size": image_size}
    save_checkpoint(
        path, dict(weights), architecture="unet2d", config_hash=digest, step=1, extra=extra
    )
    assert path.stat().st_size < 400_000
    del torch
    return path


@pytest.mark.parametrize(
    "model,size,expected",
    [
        ({"generator_channels": [-8, 16, 32, 64]}, 32, "model.generator_channels"),
        ({}, 17, "preprocess.image_size"),
        ({}, "abc", "preprocess.image_size"),
        ({}, 1 << 20, "preprocess.image_size is 1048576, at most 1024"),
        ({"generator_channels": [8, 16, 32, 65536]}, 32, "generator_channels is 65536"),
        ({"generator_channels": [8] * 12, "norm_groups": 4}, 4096, "levels"),
        ({"discriminator_layers": 40}, 32, "discriminator_layers"),
        ({"norm_groups": 0}, 32, "model.norm_groups"),
    ],
)
def test_checkpoint_metadata_out_of_range_is_one_clear_error(tmp_path, model, size, expected):
    from fedsynth.common.errors import CheckpointError
    from fedsynth.synthesis.generator_io import load_generator

    path = _forged_checkpoint(tmp_path / "gen.safetensors", model, size)
    with pytest.raises(CheckpointError, match="gen.safetensors.*") as info:
        load_generator(path)
    assert expected in str(info.value)


def test_a_small_checkpoint_cannot_make_fedsynth_allocate_a_large_network(tmp_path):
    """Metadata within the bounds that describes a 1 GB U-Net (2048 channels at every
    level) over 170 KB of weights: refused on shapes before any network memory exists. The
    peak memory of the refusal is compared with loading a real checkpoint of the same size
    in the same process (imports dominate both)."""
    import subprocess
    import sys

    import torch

    from fedsynth.common.config import ModelConfig
    from fedsynth.common.models.registry import build_generator

    claimed = {"generator_channels": [2048] * 4}
    with torch.device("meta"):
        params = sum(p.numel() for p in build_generator(ModelConfig(**claimed)).parameters())
    assert params * 4 > 1e9  # what the old loader allocated: more than 1 GB of float32
    path = _forged_checkpoint(tmp_path / "gen.safetensors", claimed, 32)
    honest = _forged_checkpoint(tmp_path / "honest.safetensors", {}, 32)
    probe = (
        "import resource\n"
        "from fedsynth.common.errors import CheckpointError\n"
        "from fedsynth.synthesis.generator_io import load_generator\n"
        "rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"load_generator({str(honest)!r})\n"
        "before = rss()\n"
        "try:\n"
        f"    load_generator({str(path)!r})\n"
        "except CheckpointError as e:\n"
        "    print('refused:', e)\n"
        "print('grew_kb', rss() - before)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert "refused:" in proc.stdout and "shape" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    grew_mb = int(proc.stdout.split("grew_kb")[1]) / 1024
    assert grew_mb < 100, (
        f"peak RSS grew by {grew_mb:.0f} MB for a {params * 4 / 1e9:.1f} GB network"
    )


# --------------------------------------------------------------------------- crash safety


@pytest.fixture
def synced_dirs(monkeypatch) -> list[str]:
    """Directories os.fsync is called on (a spy: the real fsync still runs)."""
    import os
    import stat

    real, synced = os.fsync, []

    def spy(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def test_checkpoints_and_the_server_commit_sync_their_directory(tmp_path, synced_dirs):
    import numpy as np

    from fedsynth.server import checkpointing

    cfg = load_config(SMOKE)
    weights = {"w": np.zeros((2, 2), np.float32)}
    path = checkpointing.save_checkpoint(tmp_path, cfg, 1, weights, {})
    assert str(path.parent) in synced_dirs  # the checkpoint's name survives a crash
    synced_dirs.clear()
    checkpointing.commit_round(tmp_path, checkpointing.ServerState(round=1, checkpoint=path.name))
    assert str(tmp_path) in synced_dirs  # server_state.json: the commit point
    assert str(tmp_path / "checkpoints") in synced_dirs  # latest.json, generator.safetensors


def test_ordinary_outputs_do_not_pay_for_a_directory_sync(tmp_path, synced_dirs):
    from fedsynth.common.io.atomic import atomic_write_json

    RunDir(tmp_path).append_metrics({"step": 1})
    atomic_write_json(tmp_path / "report.json", {"a": 1})
    assert synced_dirs == []


# --------------------------------------------------------------------------- divergence


def test_learning_rates_beyond_adams_range_are_refused():
    with pytest.raises(ConfigError, match="'train.lr': must be <= 1"):
        load_config(SMOKE, ["train.lr=3e38"])  # overflowed inside torch's Adam before


def test_training_that_turns_non_finite_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """Central training: 2 good steps (checkpoint), then the generator's weights turn NaN
    (as a diverged optimiser leaves them); the next interval stops with a clear error and
    nothing of it is written."""
    import torch

    from fedsynth.central import CentralRun, load_central_data
    from fedsynth.common.errors import TrainingDivergedError

    cfg = load_config(
        SMOKE,
        [f"data.cache_dir={tmp_path / 'cache'}", "privacy.enabled=false", "train.steps=4"]
        + [f"train.{k}=2" for k in ("checkpoint_every", "eval_every", "sample_every")],
    )
    run = RunDir(tmp_path / "run")
    run.create(cfg)
    central = CentralRun(cfg, run, load_central_data(cfg), device="cpu")
    central.write_privacy()
    central._after_steps(central.trainer.train_steps(2, progress=False), 1.0)  # as train()
    assert run.latest_step() == 2
    released = run.generator.read_bytes()
    with torch.no_grad():
        next(central.trainer.generator.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="non-finite weights after step 4.*step 2"):
        central.train(progress=False)
    assert run.latest_step() == 2 and run.generator.read_bytes() == released
    assert not run.generator_checkpoint(4).exists()
