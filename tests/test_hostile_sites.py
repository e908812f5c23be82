"""Hostile sites (issue 16): what one site can do to the global generator, and who a site is.

Unit tests drive the real strategies (Flower's FedAvg family with fedsynth's screening in
front) with hand-made replies; one test runs Flower's simulation engine with a node that
claims another node's site index.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError
from fedsynth.common.wire import REPLY_METRICS
from fedsynth.server.strategy import OK, REFUSED, build_strategy

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
F32_MAX = float(np.finfo(np.float32).max)


def _weights(value: float) -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.full((2, 3), value, dtype=np.float32),
        "conv.bias": np.full((2,), value, dtype=np.float32),
    }


def _arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in weights.items()})


def _reply(node: int, value: float, patients: float, site: int | None = None) -> Message:
    # Exactly the wire format's keys and types (fedsynth.common.wire.REPLY_METRICS).
    metrics = {k: ([] if m.kind is list else m.kind(0)) for k, m in REPLY_METRICS.items()}
    metrics.update({"num-examples": patients, "site-index": node if site is None else site})
    meta = Metadata(
        run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
        reply_to_message_id="", group_id="1", created_at=0.0, ttl=60.0, message_type="train",
    )  # fmt: skip
    content = RecordDict({"arrays": _arrays(_weights(value)), "metrics": MetricRecord(metrics)})
    return Message(content, metadata=meta)


def _strategy(aggregation: str = "fedavg", sites: int = 3, global_value: float = 0.0, **over):
    # update bound: 2 x lr 0.1 x 1 step x sqrt(8 weights) = 0.566
    overrides = [f"federation.aggregation={aggregation}", "federation.min_sites=1"]
    overrides += ["train.lr=0.1", "federation.local_steps=1"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    strategy = build_strategy(load_config(SMOKE, overrides), expected_sites=sites)
    strategy.set_global(_arrays(_weights(global_value)))  # as configure_train does
    return strategy


def _status(strategy) -> dict[str, tuple[str, str]]:
    return {s.site: (s.status, s.reason) for s in strategy.last_round.sites}


# --------------------------------------------------------------------------- update norms


@pytest.mark.parametrize("aggregation,sites", [("fedavg", 4), ("trimmed-mean", 5)])
def test_a_huge_update_is_clipped_to_the_bound_and_its_site_named(aggregation, sites, caplog):
    strategy = _strategy(aggregation, sites=sites, global_value=1.0)
    honest = [_reply(i, 1.1, 10) for i in range(sites - 1)]
    arrays, _ = strategy.aggregate_train(1, [*honest, _reply(sites - 1, 1e30, 10)])
    # the attacker moves the mean by at most the bound / n
    bound = 2 * 0.1 * np.sqrt(8.0)
    mean = arrays["conv.weight"].numpy()
    assert np.all(np.abs(mean - 1.1) <= bound / sites + 1e-5)
    status, reason = _status(strategy)[f"site-{sites - 1}"]
    assert status == OK and "clipped" in reason and "exceeds the bound" in reason
    assert f"site-{sites - 1}" in caplog.text and "clipped" in caplog.text


def test_an_update_100x_normal_is_refused_when_asked():
    strategy = _strategy("fedavg", global_value=1.0, **{"federation.update_bound": "refuse"})
    normal = 0.1  # a normal update moves the weights by 0.1: norm 0.1 x sqrt(8) < bound
    replies = [
        _reply(0, 1 + normal, 10),
        _reply(1, 1 + normal, 10),
        _reply(2, 1 + 100 * normal, 10),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["conv.bias"].numpy(), 1 + normal, rtol=1e-6)
    status, reason = _status(strategy)["site-2"]
    assert status == REFUSED and "update norm" in reason and "update_norm_factor" in reason
    assert strategy.last_round.sites[0].metrics["update-norm"] == pytest.approx(normal * np.sqrt(8))


def test_the_bound_can_be_turned_off():
    strategy = _strategy("fedavg", global_value=1.0, **{"federation.update_norm_factor": 0})
    arrays, _ = strategy.aggregate_train(1, [_reply(0, 1.0, 10), _reply(1, 1e6, 10)])
    np.testing.assert_allclose(arrays["conv.bias"].numpy(), (1.0 + 1e6) / 2)


# --------------------------------------------------------------------------- example counts


@pytest.mark.parametrize("count", [float("inf"), float("nan"), 0.0, -5.0])
def test_non_finite_or_non_positive_example_counts_are_refused(count):
    strategy = _strategy("fedavg")
    arrays, _ = strategy.aggregate_train(1, [_reply(0, 0.1, 10), _reply(1, 0.15, count)])
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 0.1)  # site-1 left out
    # A non-integer count already fails the wire format's type check (then the reply is
    # labelled by its node id, its claimed name unread).
    statuses = _status(strategy)
    status, reason = statuses.get("site-1") or statuses["node-1"]
    assert status == REFUSED and "num-examples" in reason


def test_a_site_cannot_grow_its_weight_after_its_first_round():
    strategy = _strategy("fedavg")
    strategy.aggregate_train(1, [_reply(0, 0.1, 10), _reply(1, 0.15, 10)])
    arrays, _ = strategy.aggregate_train(2, [_reply(0, 0.1, 10), _reply(1, 0.15, 1e12)])
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 0.125, rtol=1e-6)  # 10 : 10
    assert strategy.declared == {"site-0": 10, "site-1": 10}
    site1 = next(s for s in strategy.last_round.sites if s.site == "site-1")
    assert site1.metrics["num-examples"] == 1e12 and site1.metrics["weight"] == 10
    # ... also after a resume: the caps are handed over from the server state
    cfg = load_config(SMOKE, ["federation.min_sites=1", "train.lr=0.1", "federation.local_steps=1"])
    resumed = build_strategy(cfg, expected_sites=3, round_offset=2, declared=strategy.declared)
    resumed.set_global(_arrays(_weights(0.0)))
    arrays, _ = resumed.aggregate_train(1, [_reply(0, 0.1, 10), _reply(1, 0.15, 1e12)])
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 0.125, rtol=1e-6)


def test_equal_weights_ignore_the_claimed_counts():
    strategy = _strategy("fedavg", **{"federation.weighting": "equal"})
    arrays, _ = strategy.aggregate_train(1, [_reply(0, 0.1, 1), _reply(1, 0.15, 1e12)])
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 0.125, rtol=1e-6)


# --------------------------------------------------------------------------- the aggregate


def test_a_non_finite_aggregate_keeps_the_global_and_fails_the_round():
    # Ten finite updates at float32's maximum: their float32 weighted mean overflows to inf.
    strategy = _strategy("fedavg", sites=10, **{"federation.update_norm_factor": 0})
    arrays, metrics = strategy.aggregate_train(1, [_reply(i, F32_MAX, 10) for i in range(10)])
    assert arrays is None and metrics["aggregated"] == 0
    assert "non-finite" in strategy.last_round.reason
    assert strategy.last_round.count(OK) == 10  # the sites were fine; the round failed


def test_round_row_records_why_a_round_failed(tmp_path):
    from fedsynth.server.checkpointing import ServerState
    from fedsynth.server.rounds import RoundRecorder

    cfg = load_config(SMOKE, ["federation.update_norm_factor=0", "federation.min_sites=1"])
    strategy = build_strategy(cfg, expected_sites=10)
    strategy.set_global(_arrays(_weights(0.5)))
    strategy.aggregate_train(1, [_reply(i, F32_MAX, 10) for i in range(10)])
    recorder = RoundRecorder(tmp_path, cfg, ServerState(rounds=2))
    recorder.strategy = strategy
    recorder(1, _arrays(_weights(0.5)))  # Flower hands over the unchanged global generator
    recorder.wait()  # the round is recorded by a background writer
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in rows if r["kind"] == "round")
    assert summary["aggregated"] == 0 and "non-finite" in summary["reason"]
    state = json.loads((tmp_path / "server_state.json").read_text())
    assert state["declared"] == {f"site-{i}": 10 for i in range(10)}


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("beta,sites", [(0.2, 4), (0.1, 9), (0.0, 5)])
def test_trimmed_mean_that_trims_nothing_is_refused_at_config_time(beta, sites):
    cfg = load_config(
        SMOKE, ["federation.aggregation=trimmed-mean", f"federation.trim_fraction={beta}"]
    )
    with pytest.raises(ConfigError, match="federation.trim_fraction.*= 0 updates"):
        build_strategy(cfg, expected_sites=sites)


def test_trimmed_mean_at_its_minimum_builds():
    cfg = load_config(
        SMOKE, ["federation.aggregation=trimmed-mean", "federation.trim_fraction=0.2"]
    )
    assert build_strategy(cfg, expected_sites=5).beta == 0.2


def test_krum_picks_an_honest_update_among_a_byzantine_minority():
    strategy = _strategy(
        "krum", sites=5, **{"federation.byzantine_sites": 1, "federation.update_norm_factor": 0}
    )
    values = [1.0, 1.01, 0.99, 1.02, 50.0]
    arrays, _ = strategy.aggregate_train(1, [_reply(i, v, 10) for i, v in enumerate(values)])
    assert 0.99 <= float(arrays["conv.weight"].numpy()[0, 0]) <= 1.02


def test_multikrum_averages_the_honest_majority():
    strategy = _strategy(
        "multikrum",
        sites=5,
        **{"federation.byzantine_sites": 1, "federation.update_norm_factor": 0},
    )
    values = [1.0, 1.0, 3.0, 3.0, -500.0]
    arrays, _ = strategy.aggregate_train(1, [_reply(i, v, 10) for i, v in enumerate(values)])
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 2.0)  # the 4 = n - f honest ones


def test_krum_needs_2f_plus_3_sites():
    cfg = load_config(SMOKE, ["federation.aggregation=krum", "federation.byzantine_sites=1"])
    with pytest.raises(ConfigError, match="federation.byzantine_sites.*2f \\+ 3 = 5"):
        build_strategy(cfg, expected_sites=4)


# --------------------------------------------------------------------------- identities


def test_a_node_claiming_a_bound_name_is_refused_and_labelled_by_its_node():
    strategy = _strategy("fedavg")
    strategy.aggregate_train(1, [_reply(100, 0.1, 10, site=0), _reply(200, 0.15, 10, site=1)])
    arrays, _ = strategy.aggregate_train(
        2,
        [_reply(100, 0.1, 10, site=0), _reply(200, 0.15, 10, site=1), _reply(300, 9.0, 10, site=0)],
    )
    np.testing.assert_allclose(arrays["conv.weight"].numpy(), 0.125, rtol=1e-6)
    status = _status(strategy)
    assert status["site-0"][0] == OK and status["site-1"][0] == OK
    assert status["node-300"][0] == REFUSED and "node 100" in status["node-300"][1]
    assert strategy.owners == {"site-0": 100, "site-1": 200}


def test_two_nodes_claiming_one_unbound_name_in_one_round_are_both_refused():
    strategy = _strategy("fedavg")
    strategy.aggregate_train(1, [_reply(100, 0.1, 10, site=0), _reply(200, 0.15, 10, site=0)])
    status = _status(strategy)
    assert status["node-100"][0] == status["node-200"][0] == REFUSED
    assert "one name, one node" in status["node-100"][1]
    assert strategy.owners == {}


def test_a_node_cannot_change_its_name():
    strategy = _strategy("fedavg")
    strategy.aggregate_train(1, [_reply(100, 0.1, 10, site=0)])
    strategy.aggregate_train(2, [_reply(100, 0.1, 10, site=1)])
    assert _status(strategy)["node-100"][0] == REFUSED


def test_the_allow_list_binds_names_to_node_ids():
    strategy = _strategy("fedavg", **{"federation.site_nodes": "{site-0: 100, site-1: 200}"})
    strategy.aggregate_train(
        1,
        [_reply(300, 9.0, 10, site=0), _reply(200, 0.15, 10, site=1), _reply(400, 9.0, 10, site=5)],
    )
    status = _status(strategy)
    assert status["site-1"][0] == OK
    assert status["node-300"][0] == REFUSED and "binds to node 100" in status["node-300"][1]
    assert status["node-400"][0] == REFUSED and "does not list" in status["node-400"][1]


# --------------------------------------------------------------------------- real engine

ROGUE_PARTITION = 2


def _rogue_train(msg, context):
    """fedsynth's site, except that partition 2 claims to be site-0 from round 2 on, with a
    tiny epsilon (what an impostor would want the datasheet to say)."""
    from flwr.app import Message as FlowerMessage

    from fedsynth.client.app import train

    reply = train(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    if context.node_config["partition-id"] == ROGUE_PARTITION and server_round >= 2:
        content = reply.content
        metrics = next(iter(content.metric_records.values()))
        metrics["site-index"], metrics["epsilon"] = 0, 1e-3
        return FlowerMessage(content, reply_to=msg)
    return reply


def _rogue_app():
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(_rogue_train)
    return app


def _listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket (/proc/net/tcp, tcp6)."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[fields[9]] = (socket.inet_ntop(family, raw), int(port_hex, 16))
    return found


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(kids)
        frontier += kids
    return tree


def _our_listening_addresses() -> set[tuple[str, int]]:
    """(address, port) of the sockets this process and its children (Ray) listen on."""
    sockets, seen = _listening_sockets(), set()
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in sockets:
                    seen.add(sockets[target[8:-1]])
    return seen


def _loopback(address: str) -> bool:
    return address.removeprefix("::ffff:") in ("127.0.0.1", "::1")


def test_simulation_a_node_claiming_another_sites_index_is_refused(tmp_path):
    """Also: Ray's ports (GCS, raylet, workers) listen on loopback only during the run."""
    import cloudpickle

    from fedsynth.simulation import simulate

    cloudpickle.register_pickle_by_value(__import__(__name__))  # Ray workers lack tests/
    cfg = load_config(
        SMOKE,
        [f"data.cache_dir={tmp_path / 'cache'}", "train.batch_size=1", "federation.min_sites=2"],
    )
    run_dir = tmp_path / "run"
    listening: set[tuple[str, int]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            listening.update(_our_listening_addresses())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert simulate(cfg, run_dir, client_app=_rogue_app()) == 2
    finally:
        done.set()
        watcher.join()
    assert len(listening) >= 3, listening  # GCS, raylet, workers were seen
    assert all(_loopback(a) for a, _ in listening), sorted(listening)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    round2 = [r for r in rows if r["kind"] == "site" and r["round"] == 2]
    labels = [r["site"] for r in round2]
    assert len(labels) == len(set(labels)) == 3  # no name twice
    by = {r["site"]: r for r in round2}
    assert by["site-0"]["status"] == OK and by["site-0"]["epsilon"] > 1e-2
    rogue = next(r for r in round2 if r["site"].startswith("node-"))
    assert rogue["status"] == REFUSED and "claims to be site-0" in rogue["reason"]
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert set(privacy["sites"]) == {"site-0", "site-1", "site-2"}
    assert privacy["sites"]["site-0"]["epsilon"] > 1e-2  # the honest site's accountant
    state = json.loads((run_dir / "server_state.json").read_text())
    assert len(set(state["site_nodes"].values())) == 3
