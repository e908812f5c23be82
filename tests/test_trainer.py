"""The local trainer and the central run directory: files, resume, checkpoints, metrics."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers.gan_fakes import fake_cache, tiny_config
from safetensors.torch import load_file

from fedsynth.central import CentralData, resume_central, train_central
from fedsynth.common.errors import CheckpointError, OutputExistsError
from fedsynth.common.gan.trainer import LocalTrainer
from fedsynth.common.io.checkpoints import load_checkpoint, save_checkpoint
from fedsynth.common.metrics.image_quality import image_quality
from fedsynth.common.rundir import RunDir

DATA = CentralData(fake_cache(), fake_cache(patients=3, seed=1))
RUN = ("train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.sample_every=2")


@pytest.fixture(scope="module")
def central_run(tmp_path_factory) -> RunDir:
    """One finished 4-step DP run, shared (read-only) by the tests below."""
    root = tmp_path_factory.mktemp("central") / "run"
    return train_central(tiny_config(*RUN), root, data=DATA, progress=False)


def test_central_run_writes_every_run_directory_file(central_run):
    run = central_run
    for f in ("config.yaml", "metrics.jsonl", "privacy.json", "plots/losses.png",
              "plots/quality.png", "samples/step_0000004.png", "checkpoints/latest.json",
              "checkpoints/generator_0000004.safetensors", "checkpoints/state_0000004.safetensors"):  # fmt: skip
        assert (run.root / f).is_file(), f
    assert run.generator.read_bytes() == run.generator_checkpoint(4).read_bytes()
    metrics = run.read_metrics()
    assert [r["step"] for r in metrics] == [2, 4]
    assert metrics[-1]["epsilon"] > metrics[0]["epsilon"] > 0
    assert set(metrics[-1]["quality"]) == {"t1", "t1c", "t2", "flair"}
    privacy = json.loads(run.privacy.read_text())
    assert privacy["unit"] == "patient" and privacy["sites"]["central"]["steps"] == 4
    assert privacy["worst_epsilon"] == pytest.approx(metrics[-1]["epsilon"])
    with pytest.raises(OutputExistsError):
        train_central(tiny_config(*RUN), run.root, data=DATA, progress=False)


def test_resume_after_interruption_gives_the_same_generator_and_accountant(central_run, tmp_path):
    shutil.copytree(central_run.root, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    final = load_file(run.generator_checkpoint(4))
    privacy = json.loads(run.privacy.read_text())
    # Simulate a crash right after the step-2 checkpoint.
    run.generator_checkpoint(4).unlink()
    run.state_checkpoint(4).unlink()
    run.mark_latest(2)
    resume_central(run.root, data=DATA, progress=False)
    resumed = load_file(run.generator_checkpoint(4))
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    assert json.loads(run.privacy.read_text()) == privacy
    assert [r["step"] for r in run.read_metrics()] == [2, 4]


def test_local_trainer_four_steps_equal_two_plus_load_plus_two(tmp_path):
    # The noise secret is drawn per trainer: the resumed trainer must continue the SAME
    # stream from the saved state (secret, RNG states), not draw or restart one.
    cfg = tiny_config()
    straight = LocalTrainer(cfg, DATA.train, planned_steps=4)
    straight.train_steps(2)
    straight.save(tmp_path / "site.safetensors")
    straight.train_steps(2)
    second = LocalTrainer(cfg, DATA.train, planned_steps=4)
    second.load(tmp_path / "site.safetensors")
    assert second.randomness == straight.randomness
    report = second.train_steps(2)
    a, b = straight.get_generator_weights(), second.get_generator_weights()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert straight.accountant.state_dict() == second.accountant.state_dict()
    assert report.total_steps == 4 and report.epsilon == straight.epsilon


def test_generator_weights_exchange_round_trip_and_validation():
    t = LocalTrainer(tiny_config(), DATA.train, planned_steps=4)
    w = t.get_generator_weights()
    assert all(isinstance(v, np.ndarray) for v in w.values())
    changed = {k: v + 1 for k, v in w.items()}
    t.set_generator_weights(changed)
    assert all(np.array_equal(changed[k], v) for k, v in t.get_generator_weights().items())
    bad = dict(w)
    key = next(iter(bad))
    bad[key] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(CheckpointError, match=key):
        t.set_generator_weights(bad, source="server round 3")


def test_corrupted_or_mismatched_checkpoints_are_refused(tmp_path):
    t = LocalTrainer(tiny_config(), DATA.train, planned_steps=4)
    path = t.save(tmp_path / "state.safetensors")
    blob = bytearray(path.read_bytes())
    (tmp_path / "cut.safetensors").write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        t.load(tmp_path / "cut.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        t.load(tmp_path / "garbage.safetensors")
    other = LocalTrainer(
        tiny_config("model.generator_channels=[4,8,16]"), DATA.train, planned_steps=4
    )
    with pytest.raises(CheckpointError, match="config hash"):
        other.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        t.load(tmp_path / "missing.safetensors")


def test_checkpoint_keys_and_shapes_are_checked(tmp_path):
    t = LocalTrainer(tiny_config(), DATA.train, planned_steps=4)
    state = t.state_dict()
    tensors = dict(state.tensors)
    tensors.pop(next(k for k in tensors if k.startswith("discriminator.")))
    p = save_checkpoint(tmp_path / "x.safetensors", tensors, architecture=t.architecture,
                        config_hash=load_checkpoint(t.save(tmp_path / "ok.safetensors")).config_hash,
                        step=0, extra=state.meta)  # fmt: skip
    with pytest.raises(CheckpointError, match="missing"):
        t.load(p)
    with pytest.raises(CheckpointError, match="architecture"):
        load_checkpoint(p, architecture="unet3d")


def test_non_dp_run_says_epsilon_is_infinite(tmp_path):
    cfg = tiny_config(*RUN, "privacy.enabled=false")
    run = train_central(cfg, tmp_path / "run", data=DATA, progress=False)
    privacy = json.loads(run.privacy.read_text())
    assert privacy["dp_enabled"] is False and privacy["worst_epsilon"] is None
    assert "epsilon = infinity (no differential privacy)" in privacy["statement"]
    assert run.read_metrics()[-1]["epsilon"] is None


def test_image_quality_hand_computed_cases():
    real = torch.full((1, 4, 16, 16), -1.0)
    real[:, :, 4:12, 4:12] = 0.5  # brain: 64 pixels
    same = image_quality(real.clone(), real)
    assert same["t1"]["mae"] == 0 and math.isinf(same["t1"]["psnr"])
    assert same["t1"]["ssim"] == pytest.approx(1.0)
    off = real.clone()
    off[:, :, 4:12, 4:12] += 0.2  # error 0.2 in brain; background untouched
    q = image_quality(off, real)["flair"]
    assert q["mae"] == pytest.approx(0.2)
    assert q["psnr"] == pytest.approx(10 * math.log10(4 / 0.04))
    assert q["ssim"] < 1.0
    empty = image_quality(torch.full_like(real, -1), torch.full_like(real, -1))
    assert math.isnan(empty["t2"]["mae"])
    with pytest.raises(ValueError):
        image_quality(real[:, :3], real[:, :3])


def test_two_dp_runs_of_one_config_release_different_generators(central_run, tmp_path):
    # The released generator and the published config do not fix the noise: it comes from a
    # secret kept in the run's (private) state checkpoints, never in the released generator.
    other = train_central(tiny_config(*RUN), tmp_path / "run", data=DATA, progress=False)
    a, b = load_file(central_run.generator), load_file(other.generator)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert not any("secret" in k or "rng" in k for k in a)
    state = load_file(central_run.state_checkpoint(4))
    assert state["randomness_secret"].numel() == 32
