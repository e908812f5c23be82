"""The wire format (fedsynth.common.wire): requests and replies survive Flower's own
serialisation, a received config is parsed but never resolved, the server's reply check
follows the spec."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from fedsynth.common import wire
from fedsynth.common.config import config_to_yaml, load_config
from fedsynth.common.errors import ConfigError

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _over_the_wire(content: RecordDict) -> RecordDict:
    """Serialise and parse as Flower does between ServerApp and ClientApp."""
    return recorddict_from_proto(recorddict_to_proto(content))


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"enc.weight": rng.normal(size=(4, 3)).astype(np.float32),
            "enc.bias": np.zeros(4, np.float32)}  # fmt: skip


def _metrics(**over) -> dict:
    values = {k: ([] if m.kind is list else m.kind(0)) for k, m in wire.REPLY_METRICS.items()}
    values.update({"num-examples": 7, "site-index": 2, "epsilon": math.inf, "delta": 1e-5,
                   "history-noise-multiplier": [1.1], "history-sample-rate": [0.25],
                   "history-steps": [30]})  # fmt: skip
    values.update(over)
    return values


def test_train_request_round_trips_through_flowers_serialisation():
    cfg = load_config(SMOKE, ["privacy.target_epsilon=3"])
    config = wire.request_config(cfg, "/runs/x", rounds=4)
    config[wire.SERVER_ROUND] = 3  # set by Flower's strategy
    content = RecordDict({wire.ARRAYS: wire.generator_record(_weights()), wire.CONFIG: config})
    req = wire.parse_request(_over_the_wire(content))
    assert req.cfg == cfg and (req.server_round, req.rounds, req.run_dir) == (3, 4, "/runs/x")
    assert all(np.array_equal(req.weights[k], v) for k, v in _weights().items())
    assert req.digest == wire.weights_digest(_weights())


def test_reply_round_trips_and_matches_the_spec():
    content = _over_the_wire(wire.reply_content(_weights(), _metrics()))
    assert wire.reply_problems(content) == []
    assert dict(content.metric_records[wire.METRICS]) == _metrics()
    got = wire.weights_of(content.array_records[wire.ARRAYS])
    assert all(np.array_equal(got[k], v) for k, v in _weights().items())


def test_a_reply_outside_the_spec_is_neither_sent_nor_accepted():
    with pytest.raises(ValueError, match="loss-d"):
        wire.reply_content(_weights(), _metrics(**{"loss-d": 0.3}))
    extra = RecordDict({wire.ARRAYS: ArrayRecord(), wire.METRICS: MetricRecord(_metrics(slices=3))})
    assert "slices" in wire.reply_problems(extra)[0]
    typed = RecordDict(
        {wire.ARRAYS: ArrayRecord(), wire.METRICS: MetricRecord(_metrics(steps=1.5))}
    )
    assert "steps" in wire.reply_problems(typed)[0]
    renamed = RecordDict({"weights": ArrayRecord(), wire.METRICS: MetricRecord(_metrics())})
    assert "expected records" in wire.reply_problems(renamed)[0]


def test_received_config_is_parsed_never_resolved(monkeypatch):
    monkeypatch.setenv("FEDSYNTH_SECRET_PROBE", "leaked")
    text = config_to_yaml(load_config(SMOKE)).replace(
        "name: smoke", "name: ${oc.env:FEDSYNTH_SECRET_PROBE}"
    )
    with pytest.raises(ConfigError, match="name") as err:
        wire.parse_config_yaml(text)
    assert "leaked" not in str(err.value)
    with pytest.raises(ConfigError, match="config-yaml"):
        wire.parse_config_yaml("- just a list")
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        wire.parse_config_yaml(
            config_to_yaml(load_config(SMOKE)).replace("target_epsilon: 10.0", "target_epsilon: -1")
        )


def test_request_without_its_records_or_keys_is_a_config_error():
    with pytest.raises(ConfigError, match="train message"):
        wire.parse_request(RecordDict({wire.ARRAYS: ArrayRecord()}))
    config = ConfigRecord({wire.CONFIG_YAML: "name: x", wire.RUN_DIR: "", wire.ROUNDS: 1})
    with pytest.raises(ConfigError, match="server-round"):
        wire.parse_request(RecordDict({wire.ARRAYS: ArrayRecord(), wire.CONFIG: config}))


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.array(2.5, dtype=np.float64),  # 0-d
        np.zeros((0, 3), np.float32),  # empty
        np.arange(5, dtype=np.int64),
        np.array([True, False]),
        np.arange(6, dtype=np.uint8).reshape(2, 3),
        np.arange(4, dtype=">f4"),  # big-endian
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # np.load's path
    ],
)
def test_array_of_equals_flowers_numpy(array):
    from flwr.app import Array

    from fedsynth.common.wire import array_of

    flower = Array(array)
    want, got = flower.numpy(), array_of(flower)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.flags.writeable and got.flags.c_contiguous == want.flags.c_contiguous
    got[...] = 0  # its own memory: the message's bytes stay as they were
    np.testing.assert_array_equal(flower.numpy(), want)


def test_array_of_leaves_odd_buffers_to_numpys_own_errors():
    from flwr.app import Array

    from fedsynth.common.wire import array_of

    good = Array(np.arange(6, dtype=np.float32))
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4])
    with pytest.raises(ValueError):
        short.numpy()
    with pytest.raises(ValueError):
        array_of(short)
    header = good.data[:10] + good.data[10:].replace(b"'<f4'", b"'|O'", 1)
    pickled = Array(dtype="object", shape=(6,), stype=good.stype, data=header)
    with pytest.raises(ValueError):  # object arrays would need pickle: refused as np.load does
        array_of(pickled)
