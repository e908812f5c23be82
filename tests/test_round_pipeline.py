"""The server's critical path per round: reply polling (server/polling.py) and the
background round writer (server/rounds.py). Deterministic: a fake clock and events, no
timing assertions."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedsynth.common.config import load_config
from fedsynth.server import checkpointing, polling
from fedsynth.server.rounds import RoundRecorder
from fedsynth.server.strategy import OK, REQUIRED_METRICS, RoundOutcome, SiteOutcome

SMOKE = "configs/smoke.yaml"


class FakeClock:
    """time.monotonic / time.sleep of the polling module, advanced only by sleeps."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class FakeGrid:
    """Replies become available ``ready_at`` seconds (fake clock) after the push."""

    def __init__(self, clock: FakeClock, ready_at: dict[str, float]):
        self.clock, self.ready_at, self.pulls = clock, ready_at, 0

    def push_messages(self, messages):
        return list(self.ready_at)

    def pull_messages(self, ids):
        self.pulls += 1
        ready = [i for i in ids if self.ready_at[i] <= self.clock.now]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(polling.time, "monotonic", c.monotonic)
    monkeypatch.setattr(polling.time, "sleep", c.sleep)
    return c


@pytest.mark.parametrize("round_s", [0.05, 3.0, 60.0, 600.0])
def test_a_round_ends_within_a_percent_of_its_last_reply(clock, round_s):
    grid = FakeGrid(clock, {"a": round_s / 3, "b": round_s})
    wrapped = polling.ProportionalPollGrid(grid)  # type: ignore[arg-type]
    replies = wrapped.send_and_receive([], timeout=3600)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    late = clock.now - round_s
    assert late <= max(wrapped.min_s, wrapped.fraction * clock.now) + 1e-9
    # ~700 pulls while the pause grows (0.005 s -> 1 s), then one per second
    assert grid.pulls <= 700 + round_s / wrapped.max_s


def test_polling_stops_at_the_timeout_with_the_replies_it_has(clock):
    grid = FakeGrid(clock, {"a": 1.0, "never": 1e9})
    wrapped = polling.ProportionalPollGrid(grid)  # type: ignore[arg-type]
    replies = wrapped.send_and_receive([], timeout=20.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert clock.now == pytest.approx(20.0)


def test_bad_polling_settings_are_refused():
    with pytest.raises(ValueError, match="fraction"):
        polling.ProportionalPollGrid(None, fraction=1.5)  # type: ignore[arg-type]


def test_with_engine_signals_a_stored_reply_wakes_the_grid_at_once():
    """With an in-process engine's signals the grid waits on ``replied`` instead of sleeping:
    here the pause is 30 s, yet the round ends when the engine stores the last reply; the
    push rings ``pushed`` for the engine. (Real time, generous bounds: not a timing test.)"""
    signals = polling.EngineSignals()
    stored: set[str] = set()

    class EngineGrid:
        def push_messages(self, messages):
            return ["a", "b"]

        def pull_messages(self, ids):
            ready = [i for i in ids if i in stored]
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]

    def engine() -> None:
        assert signals.pushed.wait(10)
        for msg_id in ("a", "b"):
            time.sleep(0.05)
            stored.add(msg_id)
            signals.replied.set()

    wrapped = polling.ProportionalPollGrid(
        EngineGrid(),  # type: ignore[arg-type]
        min_s=30.0,
        max_s=30.0,
        signals=signals,
    )
    worker = threading.Thread(target=engine)
    worker.start()
    t0 = time.monotonic()
    replies = wrapped.send_and_receive([], timeout=3600)
    worker.join()
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert time.monotonic() - t0 < 20  # not a 30 s pause


def _weights() -> dict[str, np.ndarray]:
    return {"w": np.ones((2, 3), np.float32)}


def _strategy_after(round_: int) -> SimpleNamespace:
    metrics = {k: 1.0 for k in REQUIRED_METRICS} | {"num-examples": 4.0, "declined": 0.0}
    history = {"history-noise-multiplier": [1.0], "history-sample-rate": [0.5]}
    site = SiteOutcome("site-0", 7, OK, metrics=metrics, history=history | {"history-steps": [1]})
    outcome = RoundOutcome(round_, [site], aggregated=True)
    return SimpleNamespace(last_round=outcome, declared={"site-0": 4.0}, owners={"site-0": 7})


def test_recording_runs_behind_the_round_loop_and_commits_in_order(tmp_path):
    cfg = load_config(SMOKE)
    release, seen = threading.Event(), []

    def slow_evaluator(round_: int, weights: dict) -> dict:
        release.wait(timeout=60)  # a held-out evaluation that takes long
        seen.append(round_)
        return {}

    recorder = RoundRecorder(tmp_path, cfg, checkpointing.ServerState(), slow_evaluator)
    arrays = ArrayRecord({k: Array(v) for k, v in _weights().items()})
    assert recorder(0, arrays) is None
    for r in (1, 2):
        recorder.strategy = _strategy_after(r)  # type: ignore[assignment]
        assert recorder(r, arrays) is None  # returns while round r is still being evaluated
    assert checkpointing.load_state(tmp_path) is None  # nothing committed yet
    release.set()
    recorder.wait()
    state = checkpointing.load_state(tmp_path)
    assert seen == [1, 2] and state is not None and state.round == 2
    assert [h["round"] for h in state.history] == [1, 2]


def test_a_failed_recording_stops_the_run(tmp_path):
    cfg = load_config(SMOKE)

    def broken_evaluator(round_: int, weights: dict) -> dict:
        raise OSError("No space left on device")

    recorder = RoundRecorder(tmp_path, cfg, checkpointing.ServerState(), broken_evaluator)
    arrays = ArrayRecord({k: Array(v) for k, v in _weights().items()})
    recorder.strategy = _strategy_after(1)  # type: ignore[assignment]
    recorder(1, arrays)
    with pytest.raises(OSError, match="No space left"):
        recorder.wait()
    recorder.strategy = _strategy_after(2)  # type: ignore[assignment]
    recorder(2, arrays)
    recorder._pending[-1].exception()  # let round 2's recording finish (it fails too)
    with pytest.raises(OSError, match="No space left"):
        recorder(3, arrays)  # the next round's hook re-raises the writer's error


def test_a_rounds_recording_waits_for_the_next_rounds_push(tmp_path, monkeypatch):
    """The recording (mostly Python: it would hold the GIL) starts once the grid has sent
    the next round's messages; when no further round comes, ``wait`` starts it at once.
    The fallback delay is set to 60 s here: a prompt start is due to the signal."""
    from fedsynth.server import rounds

    monkeypatch.setattr(rounds, "RECORD_AFTER_PUSH_S", 60.0)
    cfg = load_config(SMOKE)
    started: list[int] = []
    began = threading.Event()

    def evaluator(round_: int, weights: dict) -> dict:
        started.append(round_)
        began.set()
        return {}

    recorder = RoundRecorder(tmp_path, cfg, checkpointing.ServerState(), evaluator)
    arrays = ArrayRecord({k: Array(v) for k, v in _weights().items()})
    recorder.round_pushed()  # round 1's messages
    recorder.strategy = _strategy_after(1)  # type: ignore[assignment]
    recorder(1, arrays)
    assert not began.wait(0.3) and started == []  # round 2 not sent yet
    recorder.round_pushed()  # round 2's messages left: round 1 is recorded now
    assert began.wait(30) and started == [1]
    began.clear()
    recorder.strategy = _strategy_after(2)  # type: ignore[assignment]
    recorder(2, arrays)  # the last round: no push follows
    t0 = time.monotonic()
    recorder.wait()
    assert started == [1, 2] and time.monotonic() - t0 < 30
    assert checkpointing.load_state(tmp_path).round == 2
