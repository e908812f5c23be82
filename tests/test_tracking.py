"""TensorBoard tracking: what a Tracker writes is what TensorBoard's reader reads back."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
from helpers import SMOKE
from helpers.tb_events import read_runs
from PIL import Image

from fedsynth.common.tracking import (
    Tracker,
    finite_scalars,
    site_epsilons,
    tensorboard_command,
    tensorboard_dir,
    training_scalars,
)


def test_finite_scalars_keeps_real_numbers_only():
    row = {"loss": 0.5, "step": 3, "np": np.float32(2.0), "eps": math.inf, "nan": math.nan,
           "ok": True, "site": "site-0", "none": None, "list": [1, 2]}  # fmt: skip
    assert finite_scalars(row) == {"loss": 0.5, "step": 3.0, "np": 2.0}


def test_scalars_images_and_text_read_back(tmp_path):
    png = tmp_path / "grid.png"
    pixels = np.zeros((8, 12, 3), np.uint8)
    pixels[:, :6] = 255
    Image.fromarray(pixels).save(png)
    with Tracker(tensorboard_dir(tmp_path)) as tb:
        for step in (5, 10):
            tags = tb.scalars({"loss_d": 1.0 / step, "site": "x", "epsilon": math.inf}, step,
                              prefix="train")  # fmt: skip
            tb.image("samples", png, step)
        tb.text("privacy", "epsilon = 1 per patient, delta = 1e-5")
        with pytest.raises(ValueError, match="H x W x 3"):
            tb.image("bad", np.zeros((4, 4), np.uint8), 0)
    assert tags == ["train/loss_d"]
    runs = read_runs(tmp_path)
    assert list(runs) == ["tensorboard"]
    run = runs["tensorboard"]
    assert run["scalars"] == {"train/loss_d": [(5, pytest.approx(0.2)), (10, pytest.approx(0.1))]}
    assert run["images"] == {"samples": [5, 10]}
    assert run["text"] == ["privacy/text_summary"]


def test_resume_hides_points_an_earlier_attempt_wrote_after_the_checkpoint(tmp_path):
    with Tracker(tmp_path / "tb") as tb:
        for step in (1, 2, 3, 4):
            tb.scalars({"loss": float(step)}, step)
    # TensorBoard reads event files in name order, and names start with the time in seconds:
    # a resume is a later process, so let a second pass as one would.
    time.sleep(1.1)
    with Tracker(tmp_path / "tb", purge_step=3) as tb:  # resumed from the checkpoint at 2
        for step in (3, 4):
            tb.scalars({"loss": 10.0 * step}, step)
    points = read_runs(tmp_path / "tb")["."]["scalars"]["loss"]
    assert points == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_disabled_tracker_writes_nothing(tmp_path):
    tb = Tracker(None)
    assert not tb.enabled and tb.scalars({"a": 1.0}, 0) == ["a"]
    tb.image("x", tmp_path / "missing.png", 0)  # not even read
    tb.close()
    assert list(tmp_path.iterdir()) == []


def test_command_line_is_shell_quoted():
    assert tensorboard_command("runs/a b") == "tensorboard --logdir 'runs/a b'"


def test_training_rows_map_to_shared_tags():
    central = {"step": 5, "loss_d": 0.7, "loss_g_l1": 20.0, "epsilon": 3.0, "seconds": 1.5,
               "mean": {"psnr": 12.0}, "quality": {"t1": {"psnr": 11.0}}, "slices": 4}  # fmt: skip
    assert training_scalars(central) == {
        "loss/d": 0.7, "loss/g_l1": 20.0, "privacy/epsilon": 3.0, "run/seconds": 1.5,
        "heldout/psnr": 12.0, "heldout/psnr/t1": 11.0, "run/slices": 4.0,
    }  # fmt: skip
    federated = {"round": 2, "kind": "round", "step": 6, "epsilon_max": 2.0, "epsilon": 2.0,
                 "sites_ok": 3, "aggregated": 1.0, "loss_d": None}  # fmt: skip
    assert training_scalars(federated) == {
        "privacy/epsilon": 2.0, "run/sites_ok": 3.0, "run/aggregated": 1.0,
    }  # fmt: skip
    sites = [{"site": "site-0", "epsilon": 1.0, "loss_d": 0.3}, {"site": "site-1", "epsilon": None}]
    assert site_epsilons(sites) == {"privacy/epsilon/site-0": 1.0}  # no site losses


def test_hparams_of_several_runs_share_one_table(tmp_path):
    for eps, auc in ((1.0, 0.5), (10.0, 0.6)):
        with Tracker(tmp_path / f"eps-{eps}" / "tensorboard") as tb:
            tb.hparams({"target_epsilon": eps, "label": f"eps-{eps}"}, {"sweep/auc": auc})
    runs = read_runs(tmp_path)
    assert {r: v["scalars"]["sweep/auc"][0][1] for r, v in runs.items()} == {
        "eps-1.0/tensorboard": 0.5, "eps-10.0/tensorboard": pytest.approx(0.6)
    }  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "eps-1.0" / "tensorboard"))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.summary_metadata  # the HParams plugin's row


def test_fedsynth_train_writes_tensorboard_and_names_it(tmp_path, capfd):
    """`fedsynth train --json`: the summary names the event folder; resume continues it."""
    import json

    from fedsynth.cli import main

    run = tmp_path / "run"
    argv = ["train", str(SMOKE), "--out", str(run), "--json", f"data.cache_dir={tmp_path / 'c'}",
            "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
            "train.sample_every=2", "train.eval_slices=4", "train.sample_slices=2"]  # fmt: skip
    assert main(argv) == 0
    out, err = capfd.readouterr()
    assert re.search(r"train: +\d+%\|", err)  # the progress bar, on stderr
    for line in err.split("\n"):  # a warning never shares a line with a bar (issue 15)
        if "Warning" in line:
            assert not re.search(r"\d+%\|", line.split("\r")[-1]), line
    summary = json.loads(out)
    assert summary["outputs"]["tensorboard"] == str(run / "tensorboard")
    assert f"tensorboard --logdir {run / 'tensorboard'}" in err  # announced at the start
    assert summary["facts"]["steps"] == 2 and "delta" in summary["facts"]["privacy_statement"]
    # 2 more steps than the noise was calibrated for: a higher ceiling, said explicitly
    resume = ["train", "--resume", str(run), "train.steps=4", "privacy.target_epsilon=30", "-q"]
    assert main(resume) == 0
    out, err = capfd.readouterr()
    assert out == "" and "%|" not in err  # --quiet: no summary, no progress bar

    scalars = read_runs(run)["tensorboard"]
    for tag in ("loss/d", "loss/g_adv", "loss/g_l1", "privacy/epsilon", "heldout/psnr",
                "heldout/ssim/flair", "run/slices_per_s"):  # fmt: skip
        assert [s for s, _ in scalars["scalars"][tag]] == [2, 4], tag
    assert scalars["images"] == {"samples": [2, 4]}
    eps = [v for _, v in scalars["scalars"]["privacy/epsilon"]]
    assert 0 < eps[0] <= 10.0 + 1e-6 < eps[1] <= 30.0  # the run's budgets


def test_sweep_budgets_line_up_in_one_hparams_view(tmp_path):
    """Each budget's run gets one HParams row; `tensorboard --logdir SWEEP` compares them."""
    import json

    from fedsynth.common.rundir import SweepDir
    from fedsynth.sweep.run import _track_budget

    for eps, auc in ((math.inf, 0.55), (10.0, 0.5)):
        run = SweepDir(tmp_path).budget("inf" if math.isinf(eps) else "10")
        run.root.mkdir(parents=True)
        rows = [{"kind": "site", "site": "site-0"}, {"kind": "round", "mean": {"ssim": 0.3}}]
        run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"worst_epsilon": None if math.isinf(eps) else 9.8, "membership_auc": auc,
                   "memorised_fraction": 0.05}  # fmt: skip
        _track_budget(run, eps, summary)
    runs = read_runs(tmp_path)
    assert set(runs) == {"eps-inf/tensorboard", "eps-10/tensorboard"}
    final = {r: {t: v[0][1] for t, v in d["scalars"].items()} for r, d in runs.items()}
    assert final["eps-10/tensorboard"] == {
        "sweep/worst_epsilon": pytest.approx(9.8), "sweep/membership_auc": 0.5,
        "sweep/memorised_fraction": pytest.approx(0.05), "sweep/heldout_ssim": pytest.approx(0.3),
    }  # fmt: skip
    assert "sweep/worst_epsilon" not in final["eps-inf/tensorboard"]  # infinity: no point
