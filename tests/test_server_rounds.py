"""What the server writes after a round (server/rounds.py) and its privacy.json
(server/privacy_report.py), on hand-built round outcomes: no Flower run needed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import MetricRecord
from helpers import SMOKE

from fedsynth.common.config import load_config
from fedsynth.common.rundir import RunDir
from fedsynth.server import checkpointing
from fedsynth.server.app import initial_generator
from fedsynth.server.privacy_report import site_privacy_entry, write_federated_privacy
from fedsynth.server.rounds import RoundRecorder, round_row, site_rows
from fedsynth.server.strategy import DECLINED, FAILED, OK, RoundOutcome, SiteOutcome

LOCAL_STEPS = 3


def _site_metrics(patients: int, epsilon: float, loss_d: float) -> dict[str, float]:
    return {
        "num-examples": patients, "site-index": 0, "declined": 0, "steps": LOCAL_STEPS,
        "steps-total": 2 * LOCAL_STEPS, "epsilon": epsilon, "delta": 1e-4,
        "noise-multiplier": 1.1, "step-noise-multiplier": 1.5, "max-grad-norm": 1.0,
        "sample-rate": 0.25, "seconds": 2.0, "loss-d": loss_d,
    }  # fmt: skip


def _history() -> dict[str, list[float]]:
    return {
        "history-noise-multiplier": [1.1],
        "history-sample-rate": [0.25],
        "history-steps": [2 * LOCAL_STEPS],
    }


def _outcome(round_: int) -> RoundOutcome:
    ok = SiteOutcome("site-0", 11, OK, metrics=_site_metrics(4, 2.5, 1.0), history=_history(),
                     reply={"records": {"arrays": "ArrayRecord"}})  # fmt: skip
    inf = SiteOutcome("site-1", 12, OK, metrics=_site_metrics(12, math.inf, 3.0),
                      history=_history())  # fmt: skip
    failed = SiteOutcome("site-2", 13, FAILED, reason="disk full")
    return RoundOutcome(round_, [ok, inf, failed], aggregated=True)


def test_site_rows_one_per_site_with_nulls_and_reasons():
    rows = site_rows(_outcome(2), LOCAL_STEPS)
    assert [(r["site"], r["status"]) for r in rows] == [
        ("site-0", OK), ("site-1", OK), ("site-2", FAILED)
    ]  # fmt: skip
    assert all(r["kind"] == "site" and r["round"] == 2 and r["step"] == 6 for r in rows)
    assert rows[0]["loss_d"] == 1.0 and rows[0]["num_examples"] == 4  # dashes -> underscores
    assert rows[1]["epsilon"] is None  # infinite: no finite guarantee, written as null
    assert rows[2]["reason"] == "disk full" and "reason" not in rows[0]


def test_round_row_weights_losses_and_takes_the_worst_epsilon():
    metrics = MetricRecord({"epsilon-max": 2.5, "loss-d": (4 * 1.0 + 12 * 3.0) / 16, "sites-ok": 2})
    row = round_row(_outcome(1), metrics, seconds=1.23456, local_steps=LOCAL_STEPS)
    assert row["kind"] == "round" and row["step"] == LOCAL_STEPS
    assert row["epsilon"] == row["epsilon_max"] == 2.5
    assert row["loss_d"] == pytest.approx(2.5) and row["seconds"] == 1.235


def test_privacy_entry_keeps_the_mechanism_history_and_drops_dp_fields_without_dp():
    entry = site_privacy_entry(_site_metrics(4, 2.5, 1.0), _history(), dp=True)
    assert entry["epsilon"] == 2.5 and entry["steps"] == 2 * LOCAL_STEPS
    assert entry["history"] == [{"noise_multiplier": 1.1, "sample_rate": 0.25, "steps": 6}]
    plain = site_privacy_entry(_site_metrics(4, math.inf, 1.0), {}, dp=False)
    assert plain["epsilon"] is None and plain["noise_multiplier"] is None
    assert plain["history"] == []


def test_federated_privacy_json_states_the_worst_site(tmp_path):
    cfg = load_config(SMOKE)
    sites = {
        "site-0": site_privacy_entry(_site_metrics(4, 2.5, 1.0), _history(), dp=True),
        "site-1": site_privacy_entry(_site_metrics(9, 4.0, 1.0), _history(), dp=True),
    }
    written = write_federated_privacy(tmp_path, cfg, sites)
    on_disk = json.loads(RunDir(tmp_path).privacy.read_text())
    assert on_disk == written
    assert on_disk["worst_epsilon"] == 4.0 and on_disk["unit"] == "patient"
    assert set(on_disk["sites"]) == {"site-0", "site-1"}


def test_recorder_writes_checkpoint_rows_replies_privacy_then_commits(tmp_path):
    cfg = load_config(SMOKE, [f"federation.local_steps={LOCAL_STEPS}"])
    run = RunDir(tmp_path)
    state = checkpointing.ServerState(rounds=2)
    recorder = RoundRecorder(tmp_path, cfg, state)
    weights = initial_generator(cfg)
    recorder.record(_outcome(1), weights, {"mean": {"psnr": 20.0}}, seconds=1.5)

    assert checkpointing.load_state(tmp_path).round == 1  # committed
    assert json.loads(run.latest.read_text())["generator"] == state.checkpoint
    loaded = checkpointing.load_generator(run.generator)  # the published copy
    assert all(np.array_equal(loaded[k], weights[k]) for k in weights)
    rows = run.read_metrics()
    assert [r["kind"] for r in rows] == ["site", "site", "site", "round"]
    assert rows[-1]["mean"] == {"psnr": 20.0} and rows[-1]["sites_failed"] == 1
    replies = [json.loads(line) for line in run.replies.read_text().splitlines()]
    assert replies == [{"round": 1, "site": "site-0", "records": {"arrays": "ArrayRecord"}}]
    privacy = run.read_privacy()
    assert set(privacy["sites"]) == {"site-0", "site-1"}  # the failed site reported nothing

    # A server killed during round 2 leaves rows behind; a restart drops them.
    run.append_metrics({"round": 2, "kind": "round", "step": 6})
    RoundRecorder(tmp_path, cfg, checkpointing.load_state(tmp_path)).drop_uncommitted()
    assert [r["round"] for r in run.read_metrics()] == [1, 1, 1, 1]


def test_a_declined_site_keeps_its_accountant_report(tmp_path):
    cfg = load_config(SMOKE)
    state = checkpointing.ServerState(rounds=1)
    declined = SiteOutcome("site-0", 1, DECLINED, metrics=_site_metrics(4, 9.9, 0.0),
                           history=_history())  # fmt: skip
    RoundRecorder(tmp_path, cfg, state).record(
        RoundOutcome(1, [declined], aggregated=False), initial_generator(cfg), {}, seconds=0.1
    )
    assert state.sites["site-0"]["epsilon"] == 9.9
    assert RunDir(tmp_path).read_privacy()["worst_epsilon"] == 9.9


def test_recorder_ignores_flowers_call_before_the_first_round(tmp_path):
    recorder = RoundRecorder(tmp_path, load_config(SMOKE), checkpointing.ServerState())
    assert recorder(0, None) is None  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())
