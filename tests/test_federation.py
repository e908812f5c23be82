"""Federation: strategy checks and aggregation (unit), checkpoints, and real Flower simulations.

The simulations (Flower's Ray engine, ~15 s each) are few: one 3-site run that covers the
generator changing, discriminators staying home, epsilon accumulating, a corrupted site and
a raising site; and one resume run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

from fedsynth.common.config import load_config
from fedsynth.common.errors import CheckpointError, ConfigError
from fedsynth.common.rundir import SERVER_STATE_FILE
from fedsynth.common.wire import REPLY_METRICS
from fedsynth.server import checkpointing
from fedsynth.server.app import initial_generator
from fedsynth.server.strategy import (
    DECLINED,
    FAILED,
    OK,
    REFUSED,
    TIMED_OUT,
    array_spec,
    build_strategy,
    check_update,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


# --------------------------------------------------------------------------- helpers


def _weights(value: float) -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.full((2, 3), value, dtype=np.float32),
        "conv.bias": np.full((2,), value, dtype=np.float32),
    }


def _arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in weights.items()})


def _metrics(site: int, patients: int, declined: int = 0, epsilon: float = 1.0) -> MetricRecord:
    # Exactly the wire format's keys and types (fedsynth.common.wire.REPLY_METRICS).
    values = {k: ([] if m.kind is list else m.kind(0)) for k, m in REPLY_METRICS.items()}
    values.update(
        {"num-examples": patients, "site-index": site, "declined": declined, "epsilon": epsilon}
    )
    return MetricRecord(values)


def _reply(node: int, content: RecordDict | Error) -> Message:
    meta = Metadata(
        run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
        reply_to_message_id="", group_id="1", created_at=0.0, ttl=60.0, message_type="train",
    )  # fmt: skip
    return Message(content, metadata=meta)


def _site_reply(node: int, weights: dict[str, np.ndarray], patients: int, **kw) -> Message:
    record = RecordDict({"arrays": _arrays(weights), "metrics": _metrics(node, patients, **kw)})
    return _reply(node, record)


def _strategy(aggregation: str = "fedavg", sites: int = 3, min_sites: int = 1, **over):
    overrides = [f"federation.aggregation={aggregation}", f"federation.min_sites={min_sites}"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(SMOKE, overrides)
    strategy = build_strategy(cfg, expected_sites=sites)
    strategy._reference = array_spec(_arrays(_weights(0.0)))  # as configure_train would set
    strategy._sent_to = []
    return strategy


# --------------------------------------------------------------------------- update checks


def test_check_update_accepts_a_matching_update():
    assert check_update(_arrays(_weights(1.0)), array_spec(_arrays(_weights(0.0)))) == []


def test_check_update_refuses_nan_inf_extra_keys_and_shapes():
    ref = array_spec(_arrays(_weights(0.0)))
    nan = _weights(1.0)
    nan["conv.bias"][0] = np.nan
    assert "non-finite" in check_update(_arrays(nan), ref)[0]
    inf = _weights(1.0)
    inf["conv.weight"][1, 2] = np.inf
    assert "non-finite" in check_update(_arrays(inf), ref)[0]
    extra = {**_weights(1.0), "discriminator.conv.weight": np.ones(2, np.float32)}
    assert "discriminator.conv.weight" in check_update(_arrays(extra), ref)[0]
    shape = {**_weights(1.0), "conv.bias": np.ones(3, np.float32)}
    assert "shape" in check_update(_arrays(shape), ref)[0]
    dtype = {**_weights(1.0), "conv.bias": np.ones(2, np.float64)}
    assert "float64" in check_update(_arrays(dtype), ref)[0]


def test_check_update_reads_the_shape_from_the_data_not_from_the_label():
    """A site controls both the Array's declared shape and the .npy bytes: an array labelled
    (2,) float32 whose bytes hold (1,) float64 must not reach the aggregation (broadcasting)."""
    ref = array_spec(_arrays(_weights(0.0)))
    forged = Array(Array(np.ones(1, np.float64)).numpy())  # bytes of a (1,) float64 array
    forged = Array(dtype="float32", shape=(2,), stype=forged.stype, data=forged.data)
    record = _arrays(_weights(1.0))
    record["conv.bias"] = forged
    problems = check_update(record, ref)
    assert problems and "data hold (1,) float64" in problems[0]


# --------------------------------------------------------------------------- aggregation


def test_fedavg_is_weighted_by_patients():
    strategy = _strategy("fedavg")
    replies = [_site_reply(0, _weights(1.0), 10), _site_reply(1, _weights(4.0), 30)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), (1.0 * 10 + 4.0 * 30) / 40)
    assert arrays["conv.bias"].numpy().dtype == np.float32
    assert metrics["sites-ok"] == 2
    assert not any(k.startswith("loss") for k in metrics)  # losses stay at the sites


def test_fedmedian_ignores_an_outlier():
    strategy = _strategy("fedmedian")
    replies = [_site_reply(i, _weights(v), 10 + i) for i, v in enumerate([1.0, 2.0, 1000.0])]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["conv.bias"].numpy(), 2.0)


def test_trimmed_mean_cuts_both_tails():
    strategy = _strategy("trimmed-mean", sites=5, **{"federation.trim_fraction": 0.2})
    values = [-1000.0, 1.0, 2.0, 3.0, 1000.0]
    arrays, _ = strategy.aggregate_train(
        1, [_site_reply(i, _weights(v), 5) for i, v in enumerate(values)]
    )
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 2.0)


def test_bad_declined_failed_and_missing_sites_are_left_out():
    strategy = _strategy("fedavg", sites=5, min_sites=1)
    nan = _weights(9.0)
    nan["conv.weight"][0, 0] = np.nan
    strategy._sent_to = [0, 1, 2, 3, 4]
    replies = [
        _site_reply(0, _weights(2.0), 10),
        _site_reply(1, nan, 10),
        _reply(2, RecordDict({"arrays": ArrayRecord(), "metrics": _metrics(2, 10, declined=1)})),
        _reply(
            3,
            Error(
                code=0, reason="<'Message: [site site-3] DataError: case7_seg.nii.gz unreadable'>"
            ),
        ),
    ]  # node 4 never answers
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 2.0)
    status = {s.site: s.status for s in strategy.last_round.sites}
    assert status == {
        "site-0": OK,
        "site-1": REFUSED,
        "site-2": DECLINED,
        "site-3": FAILED,
        "node-4": TIMED_OUT,
    }
    assert metrics["sites-refused"] == metrics["sites-declined"] == metrics["sites-failed"] == 1
    failed = next(s for s in strategy.last_round.sites if s.status == FAILED)
    assert "case7_seg" in failed.reason


def test_too_few_accepted_sites_keep_the_generator():
    strategy = _strategy("fedavg", sites=3, min_sites=2)
    arrays, metrics = strategy.aggregate_train(1, [_site_reply(0, _weights(2.0), 10)])
    assert arrays is None and metrics["aggregated"] == 0
    assert not strategy.last_round.aggregated


def test_reply_check_follows_the_wire_format_not_the_first_site():
    # A first reply carrying an unaccounted extra value is refused even though no other
    # site answered before it; a conforming second reply is accepted.
    strategy = _strategy("fedavg", min_sites=1)
    leaky = _metrics(0, 5)
    leaky["loss-d"] = 0.25
    replies = [
        _reply(0, RecordDict({"arrays": _arrays(_weights(1.0)), "metrics": leaky})),
        _site_reply(1, _weights(3.0), 5),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    status = {s.site: (s.status, s.reason) for s in strategy.last_round.sites}
    assert status["node-0"][0] == REFUSED and "loss-d" in status["node-0"][1]
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 3.0)


def test_extra_record_in_a_reply_is_refused():
    strategy = _strategy("fedavg")
    content = RecordDict(
        {
            "arrays": _arrays(_weights(1.0)),
            "disc": _arrays(_weights(1.0)),
            "metrics": _metrics(0, 5),
        }
    )
    strategy.aggregate_train(1, [_reply(0, content)])
    assert strategy.last_round.sites[0].status == REFUSED


def test_min_sites_above_the_federation_is_a_config_error():
    cfg = load_config(SMOKE, ["federation.min_sites=4"])
    with pytest.raises(ConfigError, match="federation.min_sites"):
        build_strategy(cfg, expected_sites=3)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_commit_and_truncate(tmp_path):
    cfg = load_config(SMOKE)
    weights = {k: np.full_like(v, 1.0) for k, v in initial_generator(cfg).items()}
    path = checkpointing.save_checkpoint(tmp_path, cfg, 1, weights, {})
    checkpointing.commit_round(
        tmp_path, checkpointing.ServerState(round=1, rounds=3, checkpoint=path.name)
    )
    checkpointing.save_checkpoint(
        tmp_path, cfg, 2, initial_generator(cfg), {}
    )  # killed before commit
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"round": 1}\n{"round": 2}\n{"round": 2, "cut')
    state_back, loaded = checkpointing.load_resume_point(tmp_path)
    assert state_back.round == 1
    assert all((loaded[k] == 1.0).all() for k in weights)
    assert (
        json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["generator"] == path.name
    )
    assert checkpointing.truncate_metrics(metrics, 1) == 2
    assert metrics.read_text() == '{"round": 1}\n'
    # The central loader reads it: same format as central generator checkpoints.
    from fedsynth.common.io.checkpoints import load_checkpoint
    from fedsynth.common.models.registry import architecture_hash

    ckpt = load_checkpoint(
        path, architecture=cfg.model.generator, config_hash=architecture_hash(cfg.model)
    )
    assert ckpt.step == cfg.federation.local_steps and ckpt.extra["round"] == 1


def test_corrupt_state_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / SERVER_STATE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="server_state.json"):
        checkpointing.load_state(tmp_path)
    assert checkpointing.load_resume_point(tmp_path / "fresh") is None


# --------------------------------------------------------------------------- simulations


class _FakeLinkState:
    """The two LinkState calls the engine's message movers make, on plain lists."""

    def __init__(self) -> None:
        self.ins: dict[int, list[str]] = {7: []}
        self.res: list[str] = []

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        out, self.ins[node_id] = self.ins[node_id][:limit], self.ins[node_id][limit:]
        return out

    def store_message_res(self, msg: str) -> None:
        self.res.append(msg)


def test_engine_signals_move_messages_when_rung_and_restore_flowers_loops(monkeypatch):
    """In simulation the engine's movers wait on the server's push instead of polling every
    0.1 s, and ring the server when a reply is stored. The idle wait is set to 60 s here, so
    a message delivered within seconds was delivered because of the push signal."""
    import queue
    import threading
    import time

    from flwr.server.superlink.fleet.vce import vce_api

    from fedsynth import simulation
    from fedsynth.server.polling import EngineSignals

    monkeypatch.setattr(simulation, "_ENGINE_IDLE_S", 60.0)
    flowers = (vce_api.add_messages_to_queue, vce_api.put_message_into_state)
    signals, state, stop = EngineSignals(), _FakeLinkState(), threading.Event()
    to_sites, from_sites = queue.Queue(), queue.Queue()
    with simulation.engine_signals(signals) as active:
        assert active
        movers = [
            threading.Thread(target=vce_api.add_messages_to_queue, args=(state, to_sites, {7: 0}, stop)),
            threading.Thread(target=vce_api.put_message_into_state, args=(state, from_sites, stop)),
        ]  # fmt: skip
        for t in movers:
            t.start()
        time.sleep(0.2)  # the mover has scanned once and now waits (60 s) for a push
        state.ins[7].append("train")
        signals.pushed.set()
        t0 = time.monotonic()
        assert to_sites.get(timeout=30) == "train"
        assert time.monotonic() - t0 < 30
        from_sites.put("reply")
        assert signals.replied.wait(30) and state.res == ["reply"]
        stop.set()
        signals.pushed.set()  # end the 60 s wait
        for t in movers:
            t.join(timeout=30)
            assert not t.is_alive()
    assert (vce_api.add_messages_to_queue, vce_api.put_message_into_state) == flowers


def test_engine_signals_leave_a_changed_flower_alone(monkeypatch):
    from flwr.server.superlink.fleet.vce import vce_api

    from fedsynth import simulation
    from fedsynth.server.polling import EngineSignals

    def changed(state, queue, nodes_mapping, f_stop, extra):  # a future Flower's loop
        raise AssertionError("not called here")

    monkeypatch.setattr(vce_api, "add_messages_to_queue", changed)
    with simulation.engine_signals(EngineSignals()) as active:
        assert not active and vce_api.add_messages_to_queue is changed


def _latest_generator(run_dir: Path) -> dict[str, np.ndarray]:
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    return checkpointing.load_generator(run_dir / "checkpoints" / latest["generator"])


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One phantom cohort and slice caches for both simulations (generation costs seconds)."""
    return tmp_path_factory.mktemp("fed-cache")


def _sim_config(cache: Path, *extra: str):
    # by-site smoke split: the smallest site has 2 patients, so 1 expected patient per step
    over = [f"data.cache_dir={cache}", "federation.min_sites=2", "train.batch_size=1"]
    return load_config(SMOKE, [*over, *extra])


@contextlib.contextmanager
def _one_corrupt_case(cfg, site: str) -> Iterator[str]:
    """Replace one label file of ``site`` by garbage for the block; yield its subject id.

    The original is moved aside and back (same bytes, same mtime), so the shared cohort and
    its slice caches are intact afterwards.
    """
    from fedsynth.common.data.cohort import load_split, resolve_cohort

    cohort = resolve_cohort(cfg)
    subject = sorted(load_split(cohort).sites[site])[0]
    seg = next((cohort / subject).resolve().glob("*seg.nii*"))
    aside = seg.with_name(".aside-" + seg.name)
    os.replace(seg, aside)
    try:
        seg.write_bytes(b"not a nifti file")
        yield subject
    finally:
        os.replace(aside, seg)


def test_simulation_three_sites_one_broken(tmp_path, shared_cache):
    """3 sites x 2 rounds: site-2 has a corrupted case and fails; the others carry on."""
    from fedsynth.simulation import simulate

    cfg = _sim_config(shared_cache)
    run_dir = tmp_path / "run"
    with _one_corrupt_case(cfg, "site-2") as broken:
        assert simulate(cfg, run_dir) == 2

    rows = _read_jsonl(run_dir / "metrics.jsonl")
    sites = [r for r in rows if r["kind"] == "site"]
    by = {(r["round"], r["site"]): r for r in sites}
    assert {r["status"] for r in sites if r["site"] == "site-2"} == {FAILED}
    assert broken in by[(1, "site-2")]["reason"]
    for site in ("site-0", "site-1"):  # epsilon accumulates across rounds, within budget
        e1, e2 = by[(1, site)]["epsilon"], by[(2, site)]["epsilon"]
        assert 0 < e1 < e2 <= cfg.privacy.target_epsilon * 1.0001
        assert by[(2, site)]["steps_total"] == 2 * cfg.federation.local_steps
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [r["sites_ok"] for r in rounds] == [2, 2] and all(r["aggregated"] == 1 for r in rounds)

    start = initial_generator(cfg)
    final = _latest_generator(run_dir)
    assert set(final) == set(start)
    assert any(not np.allclose(final[k], start[k]) for k in start)

    # What crossed the network: exactly the generator's arrays and one MetricRecord.
    # The exact set of metric keys (each DP-accounted or independent of patient data): no
    # loss, no count of patients sampled, no wall time.
    for reply in _read_jsonl(run_dir / "replies.jsonl"):
        assert reply["records"] == {"arrays": "ArrayRecord", "metrics": "MetricRecord"}
        assert set(reply["metrics"]) == set(REPLY_METRICS)
        assert set(reply["arrays"]["arrays"]) == set(start)
        assert not any(
            "discriminator" in k or k.startswith("opt") for k in reply["arrays"]["arrays"]
        )
    # The discriminator and the accountant stayed in the sites' state dirs.
    assert (run_dir / "sites" / "site-0" / "state" / "trainer.safetensors").is_file()

    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert set(privacy["sites"]) == {"site-0", "site-1"}
    assert privacy["worst_epsilon"] == pytest.approx(
        max(by[(2, s)]["epsilon"] for s in ("site-0", "site-1"))
    )
    assert (run_dir / "samples" / f"step_{2 * cfg.federation.local_steps:07d}.png").is_file()


def test_resume_continues_and_sites_refuse_beyond_their_budget(tmp_path, shared_cache):
    """Run 1 round (noise calibrated to spend the budget in it), then resume to 2 rounds:
    the server continues at round 2 and every site declines (budget spent); no crash."""
    import argparse

    from fedsynth.cli.simulate import resolve_run
    from fedsynth.simulation import simulate

    cfg = _sim_config(shared_cache, "federation.rounds=1")
    run_dir = tmp_path / "run"
    assert simulate(cfg, run_dir) == 1
    first = _latest_generator(run_dir)

    args = argparse.Namespace(
        config=None, overrides=["federation.rounds=2"], resume=run_dir, out=None, overwrite=False
    )
    cfg2, same_dir = resolve_run(args)
    assert same_dir == run_dir.resolve() and cfg2.federation.rounds == 2
    from fedsynth.cli import main
    from fedsynth.cli.simulate import EXIT_ROUNDS_FAILED

    # Round 2 releases nothing (every site declines): the command says so with its status.
    resume = ["simulate", "--resume", str(run_dir), "federation.rounds=2"]
    assert main(resume) == EXIT_ROUNDS_FAILED
    assert checkpointing.load_state(run_dir).round == 2
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert [(u["round"], u["charged"]) for u in privacy["unreleased_rounds"]] == [(2, [])]
    assert "round 2 (0 accepted updates" in privacy["statement"]

    rows = _read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows if r["kind"] == "round"] == [1, 2]
    round2 = [r for r in rows if r["kind"] == "site" and r["round"] == 2]
    assert len(round2) == 3 and {r["status"] for r in round2} == {DECLINED}
    assert all(r["steps_total"] == cfg.federation.local_steps for r in round2)
    final = _latest_generator(run_dir)
    assert all(np.array_equal(final[k], first[k]) for k in first)  # nothing to aggregate


def test_site_ceiling_refuses_a_server_asking_for_more_privacy(tmp_path):
    from fedsynth.client.site import check_site_policy, identify_site

    node = {
        "data-path": str(tmp_path),
        "site-name": "site-a",
        "max-epsilon": 5.0,
        "max-delta": 1e-5,
    }
    site = identify_site(node, None)
    assert (site.max_epsilon, site.max_delta) == (5.0, 1e-5)
    check_site_policy(load_config(None, ["privacy.target_epsilon=5", "privacy.delta=1e-6"]), site)
    for over, key in [
        ("privacy.target_epsilon=8", "privacy.target_epsilon"),
        ("privacy.enabled=false", "privacy.enabled"),
        ("privacy.delta=1e-4", "privacy.delta"),
    ]:
        with pytest.raises(ConfigError, match=key):
            check_site_policy(load_config(None, ["privacy.target_epsilon=5", over]), site)
    with pytest.raises(ConfigError, match="max-epsilon"):
        identify_site({**node, "max-epsilon": "lots"}, None)


def test_server_killed_mid_run_resumes_from_the_last_completed_round(tmp_path, shared_cache):
    """SIGKILL the whole `fedsynth simulate` process group after round 1 is committed, then
    `--resume`: rounds continue at 2, no round is recorded twice, and no site trained more
    steps than the rounds it took part in (a repeated request is answered from its stored reply)."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    over = [f"data.cache_dir={shared_cache}", "federation.min_sites=2", "train.batch_size=1"]
    cmd = [sys.executable, "-m", "fedsynth", "simulate", str(SMOKE), "--out", str(run_dir)]
    cmd += [*over, "federation.rounds=3", "federation.release_ema=0.5"]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    state = run_dir / SERVER_STATE_FILE
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text())["round"] >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its Ray workers, mid-run
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_at = json.loads(state.read_text())["round"]
    assert 1 <= killed_at < 3

    from fedsynth.cli import main

    assert main(["simulate", "--resume", str(run_dir)]) == 0
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows if r["kind"] == "round"] == [1, 2, 3]
    sites = [r for r in rows if r["kind"] == "site" and r["status"] == "ok"]
    local_steps = load_config(SMOKE).federation.local_steps
    for site in {r["site"] for r in sites}:
        rounds = sorted(r["round"] for r in sites if r["site"] == site)
        assert len(rounds) == len(set(rounds)), f"{site} recorded a round twice"
        last = max((r for r in sites if r["site"] == site), key=lambda r: r["round"])
        assert last["steps_total"] <= local_steps * len(rounds)
    committed = json.loads(state.read_text())
    assert committed["round"] == 3
    # The EMA release survived the kill: it averages every aggregated round, not only those
    # after the restart.
    aggregated = sum(r["aggregated"] for r in rows if r["kind"] == "round")
    assert aggregated >= killed_at and committed["release_rounds"] == aggregated
    released = checkpointing.load_generator(run_dir / "checkpoints" / "generator.safetensors")
    ema = checkpointing.load_generator(run_dir / "checkpoints" / committed["release"])
    assert all(np.array_equal(released[k], ema[k]) for k in ema)
