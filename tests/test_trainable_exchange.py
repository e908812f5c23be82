"""Only the trainable set travels (``privacy.trainable`` other than ``all``; fedsynth.common.wire).

Unit: every registered strategy screens replies against the trainable set, aggregates only it
and merges it into the full generator, whose frozen arrays stay bit-for-bit; the request after
round 1 carries only the trainable set. Site: the real ``train_round`` replies with exactly its
trainable tensors and refuses a request that does not fit them. Integration: a real Flower
simulation with norm+bias.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from fedsynth.client import app as client_app
from fedsynth.client.site import identify_site
from fedsynth.common import wire
from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError
from fedsynth.common.wire import REPLY_METRICS
from fedsynth.server.app import initial_generator, trainable_names
from fedsynth.server.strategy import OK, REFUSED, STRATEGIES, build_strategy

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
TRAINABLE = ["conv.bias"]


def _weights(weight: float, bias: float) -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.full((2, 3), weight, dtype=np.float32),
        "conv.bias": np.full((2,), bias, dtype=np.float32),
    }


def _arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in weights.items()})


def _reply(node: int, arrays: dict[str, np.ndarray]) -> Message:
    metrics = {k: ([] if m.kind is list else m.kind(0)) for k, m in REPLY_METRICS.items()}
    metrics.update({"num-examples": 4, "site-index": node})
    meta = Metadata(
        run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
        reply_to_message_id="", group_id="1", created_at=0.0, ttl=60.0, message_type="train",
    )  # fmt: skip
    return Message(
        RecordDict({"arrays": _arrays(arrays), "metrics": MetricRecord(metrics)}), metadata=meta
    )


class _Grid:
    """The one thing Flower's configure_train asks of a grid: the connected node ids."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4, 5]


def _strategy(aggregation: str, **over):
    overrides = [f"federation.aggregation={aggregation}", "federation.min_sites=1"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return build_strategy(load_config(SMOKE, overrides), expected_sites=5, trainable=TRAINABLE)


@pytest.mark.parametrize("aggregation", sorted(STRATEGIES))
def test_every_strategy_aggregates_only_the_trainable_set(aggregation, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what a ServerApp process has set
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    strategy = _strategy(aggregation, **{"federation.update_norm_factor": 0})
    global_ = _weights(0.5, 0.0)
    config = ConfigRecord({"x": 1})

    first = list(strategy.configure_train(1, _arrays(global_), config, _Grid()))
    sent = first[0].content
    assert set(sent.array_records["arrays"]) == set(global_)  # round 1: the whole generator
    assert sent.config_records["config"][wire.EXCHANGE] == wire.EXCHANGE_TRAINABLE
    digest = sent.config_records["config"][wire.FROZEN_DIGEST]
    assert digest == wire.frozen_digest(global_, TRAINABLE)

    second = list(strategy.configure_train(2, _arrays(global_), config, _Grid()))
    assert set(second[0].content.array_records["arrays"]) == set(TRAINABLE)  # after: the set

    replies = [_reply(n, {"conv.bias": np.full((2,), 0.1 * n, np.float32)}) for n in range(1, 6)]
    replies.append(_reply(9, _weights(7.0, 7.0)))  # the whole generator: not what was asked
    arrays, _ = strategy.aggregate_train(2, replies)
    status = {s.node_id: (s.status, s.reason) for s in strategy.last_round.sites}
    assert all(status[n][0] == OK for n in range(1, 6))
    assert status[9][0] == REFUSED and "array keys differ" in status[9][1]
    merged = {k: a.numpy() for k, a in arrays.items()}
    assert set(merged) == set(global_)
    frozen = merged["conv.weight"].tobytes()
    assert frozen == global_["conv.weight"].tobytes()  # bit-for-bit
    assert 0.1 - 1e-6 <= float(merged["conv.bias"][0]) <= 0.5 + 1e-6
    assert not np.allclose(merged["conv.bias"], 0.0)


def test_the_update_bound_and_the_shape_check_use_the_trainable_set():
    strategy = _strategy("fedavg", **{"train.lr": 0.1, "federation.local_steps": 1})
    strategy.set_global(_arrays(_weights(0.5, 0.0)))
    # 2 x lr 0.1 x 1 step x sqrt(2 trainable values), not sqrt(8 generator values)
    assert strategy._bound == pytest.approx(2 * 0.1 * 1 * math.sqrt(2))
    strategy.aggregate_train(1, [_reply(1, {"conv.bias": np.zeros((3,), np.float32)})])
    (outcome,) = strategy.last_round.sites
    assert outcome.status == REFUSED and "conv.bias: shape (3,)" in outcome.reason


def test_wire_received_problems_names_the_nearer_expectation():
    full, trainable = ["a.weight", "a.bias", "b.bias"], ["a.bias", "b.bias"]
    assert wire.received_problems(full, full, trainable) == []
    assert wire.received_problems(trainable, full, trainable) == []
    assert wire.received_problems(trainable, full, None)  # only with exchange=trainable
    (problem,) = wire.received_problems(["a.bias", "b.bias", "x"], full, trainable)
    assert "trainable set" in problem and "'x'" in problem
    assert wire.merge_trainable({"a": 1, "b": 2}, {"b": 3}) == {"a": 1, "b": 3}
    with pytest.raises(KeyError):
        wire.merge_trainable({"a": 1}, {"z": 3})


# --------------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exchange-cache")


def _site_request(cfg, run_dir: Path, server_round: int, weights, frozen_digest: str):
    return client_app.TrainRequest(
        cfg=cfg, server_round=server_round, rounds=cfg.federation.rounds, run_dir=str(run_dir),
        weights=weights, digest=client_app.weights_digest(weights),
        exchange=wire.EXCHANGE_TRAINABLE, frozen_digest=frozen_digest,
    )  # fmt: skip


def test_a_site_replies_with_its_trainable_set_and_refuses_what_does_not_fit(tmp_path, cache_dir):
    cfg = load_config(
        SMOKE, [f"data.cache_dir={cache_dir}", "train.batch_size=1", "privacy.trainable=norm+bias"]
    )
    names = trainable_names(cfg)
    full = initial_generator(cfg)
    assert names and set(names) < set(full)
    digest = wire.frozen_digest(full, names)
    run_dir = tmp_path / "run"
    site = identify_site({"partition-id": 0, "num-partitions": 3}, run_dir)

    reply = client_app.train_round(site, _site_request(cfg, run_dir, 1, full, digest))
    sent = {k: a.numpy() for k, a in reply.array_records["arrays"].items()}
    assert {k: v.shape for k, v in sent.items()} == {k: full[k].shape for k in names}

    part = wire.trainable_part(full, names)
    with pytest.raises(ConfigError, match="frozen parameters differ"):
        client_app.train_round(site, _site_request(cfg, run_dir, 2, part, "0" * 64))
    frozen = next(k for k in full if k not in names)
    with pytest.raises(ConfigError, match=r"does not fit.*trainable set"):
        client_app.train_round(
            site, _site_request(cfg, run_dir, 2, {**part, frozen: full[frozen]}, digest)
        )
    again = client_app.train_round(site, _site_request(cfg, run_dir, 2, part, digest))
    assert set(again.array_records["arrays"]) == set(names)
    assert again.metric_records["metrics"]["steps-total"] == 2 * cfg.federation.local_steps


# --------------------------------------------------------------------------- simulation


def test_simulation_with_norm_bias_exchanges_only_the_trainable_set(tmp_path):
    """A real Flower simulation (3 sites x 2 rounds): every reply carries exactly the
    trainable tensors (names and shapes), and the released generator is whole, its frozen
    parameters bit-for-bit the round-1 generator's, its trainable ones trained."""
    from fedsynth.simulation import simulate

    cfg = load_config(
        SMOKE,
        [f"data.cache_dir={tmp_path / 'cache'}", "federation.min_sites=2", "train.batch_size=1",
         "privacy.trainable=norm+bias"],
    )  # fmt: skip
    run_dir = tmp_path / "run"
    assert simulate(cfg, run_dir) == 2
    start, names = initial_generator(cfg), trainable_names(cfg)
    assert names is not None
    replies = [json.loads(line) for line in (run_dir / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == 2 * cfg.split.sites
    for reply in replies:
        assert reply["arrays"]["arrays"] == {k: list(start[k].shape) for k in names}
    from fedsynth.server.checkpointing import load_generator

    final = load_generator(run_dir / "checkpoints" / "generator.safetensors")
    assert set(final) == set(start)
    frozen = [k for k in start if k not in names]
    assert all(final[k].tobytes() == start[k].tobytes() for k in frozen)
    assert any(not np.array_equal(final[k], start[k]) for k in names)
