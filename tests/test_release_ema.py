"""The released generator as an EMA of the aggregates over rounds (fedsynth.server.release):
the average itself, what the server writes and releases, and resume from the committed round."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SMOKE

from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError
from fedsynth.common.gan.ema import warmed_decay
from fedsynth.common.rundir import RunDir
from fedsynth.server import checkpointing
from fedsynth.server.release import ReleaseEMA
from fedsynth.server.rounds import RoundRecorder
from fedsynth.server.strategy import OK, RoundOutcome, SiteOutcome


def _w(weight: float, frozen: float = 0.25) -> dict[str, np.ndarray]:
    return {
        "a.weight": np.full((2, 2), weight, np.float32),
        "frozen.weight": np.full((3,), frozen, np.float32),
    }


def test_the_average_follows_the_aggregates_and_keeps_equal_arrays_bit_for_bit():
    ema = ReleaseEMA(0.5)
    first = ema.update(_w(1.0, frozen=0.1), aggregated=True)
    assert first["a.weight"][0, 0] == 1.0  # started at the first aggregate
    second = ema.update(_w(3.0, frozen=0.1), aggregated=True)
    d = warmed_decay(0.5, 1)  # 2/11: a young average follows the latest aggregate
    assert second["a.weight"][0, 0] == pytest.approx(1.0 + (1 - d) * 2.0)
    assert second["frozen.weight"].tobytes() == _w(0, frozen=0.1)["frozen.weight"].tobytes()
    unchanged = ema.update(_w(99.0, frozen=0.1), aggregated=False)  # a failed round
    assert np.array_equal(unchanged["a.weight"], second["a.weight"]) and ema.rounds == 2
    assert ReleaseEMA(0.0).update(_w(7.0), aggregated=True)["a.weight"][0, 0] == 7.0  # off
    with pytest.raises(ValueError, match="decay"):
        ReleaseEMA(1.0)


def test_release_ema_is_checked_by_the_config():
    with pytest.raises(ConfigError, match="federation.release_ema"):
        load_config(SMOKE, ["federation.release_ema=1.5"])
    assert load_config(SMOKE).federation.release_ema == 0.0  # off by default (docs say why)


def _outcome(round_: int, aggregated: bool = True) -> RoundOutcome:
    metrics = {"num-examples": 4, "epsilon": 1.0, "delta": 1e-4, "sample-rate": 0.25,
               "steps-total": 3 * round_, "noise-multiplier": 1.0,
               "step-noise-multiplier": 1.4, "max-grad-norm": 1.0}  # fmt: skip
    site = SiteOutcome("site-0", 1, OK, metrics=metrics, history={})
    return RoundOutcome(round_, [site], aggregated=aggregated)


def _aggregate(cfg, round_: int) -> dict[str, np.ndarray]:
    from fedsynth.server.app import initial_generator

    return {k: v + np.float32(0.01 * round_) for k, v in initial_generator(cfg).items()}


def _record(recorder: RoundRecorder, cfg, round_: int) -> None:
    recorder.record(_outcome(round_), _aggregate(cfg, round_), {}, seconds=0.1)


def test_the_server_releases_the_average_and_a_resumed_server_continues_it(tmp_path):
    cfg = load_config(SMOKE, ["federation.release_ema=0.6", "federation.rounds=3"])
    whole, cut = tmp_path / "whole", tmp_path / "cut"

    recorder = RoundRecorder(whole, cfg, checkpointing.ServerState(rounds=3))
    for r in (1, 2, 3):
        _record(recorder, cfg, r)
    run = RunDir(whole)
    released = checkpointing.load_generator(run.generator)
    last = _aggregate(cfg, 3)
    state = checkpointing.load_state(whole)
    assert state.release == run.release_checkpoint(3 * cfg.federation.local_steps).name
    assert state.release_rounds == 3
    assert json.loads(run.latest.read_text())["release"] == state.release
    # The round's aggregate is the resume point; the EMA, which lags it, is released.
    resume_point = checkpointing.load_generator(run.checkpoints / state.checkpoint)
    assert all(np.array_equal(resume_point[k], last[k]) for k in last)
    k = next(iter(last))
    assert not np.allclose(released[k], last[k])
    assert float(np.max(np.abs(released[k] - last[k]))) < 0.02 + 1e-6

    # A server killed after round 2 (its state committed), restarted: round 3 from the files.
    first = RoundRecorder(cut, cfg, checkpointing.ServerState(rounds=3))
    for r in (1, 2):
        _record(first, cfg, r)
    del first
    state2 = checkpointing.load_state(cut)
    assert state2.round == 2 and state2.release_rounds == 2
    resumed = RoundRecorder(cut, cfg, state2)
    _record(resumed, cfg, 3)
    again = checkpointing.load_generator(RunDir(cut).generator)
    assert all(again[k].tobytes() == released[k].tobytes() for k in released)


def test_without_ema_the_last_aggregate_is_released(tmp_path):
    cfg = load_config(SMOKE)
    recorder = RoundRecorder(tmp_path, cfg, checkpointing.ServerState(rounds=2))
    _record(recorder, cfg, 1)
    state = checkpointing.load_state(tmp_path)
    assert state.release == "" and state.release_rounds == 0
    released = checkpointing.load_generator(RunDir(tmp_path).generator)
    agg = _aggregate(cfg, 1)
    assert all(np.array_equal(released[k], agg[k]) for k in agg)
    assert not list(RunDir(tmp_path).checkpoints.glob("release_*"))


def test_a_round_that_released_nothing_is_named_with_the_sites_charged_for_it(tmp_path, caplog):
    """A round below federation.min_sites: the sites that trained were charged; the state,
    privacy.json (and its statement) and the log say so, and the release stays as it was."""
    cfg = load_config(SMOKE, ["federation.release_ema=0.5"])
    recorder = RoundRecorder(tmp_path, cfg, checkpointing.ServerState(rounds=2))
    _record(recorder, cfg, 1)
    before = checkpointing.load_generator(RunDir(tmp_path).generator)
    failed = _outcome(2, aggregated=False)
    failed.reason = "1 accepted updates, fewer than federation.min_sites=2"
    with caplog.at_level("WARNING"):
        recorder.record(failed, _aggregate(cfg, 1), {}, seconds=0.1)
    assert "site-0 trained in it" in caplog.text
    state = checkpointing.load_state(tmp_path)
    assert state.unreleased == [{"round": 2, "reason": failed.reason, "charged": ["site-0"]}]
    privacy = RunDir(tmp_path).read_privacy()
    assert privacy["unreleased_rounds"] == state.unreleased
    assert "round 2 (1 accepted updates" in privacy["statement"]
    assert "charged: site-0" in privacy["statement"]
    after = checkpointing.load_generator(RunDir(tmp_path).generator)
    assert all(np.array_equal(after[k], before[k]) for k in before)
