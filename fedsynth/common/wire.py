"""The wire format between the ServerApp and the ClientApp: the one place both agree on.

A train request (server -> site) is Flower's RecordDict with

- ``ARRAYS``: ArrayRecord, the global generator (state_dict names -> float32 arrays);
- ``CONFIG``: ConfigRecord with ``config-yaml`` (the run's resolved config as plain YAML),
  ``run-dir`` (where simulated sites keep their state), ``rounds`` (planned rounds),
  ``server-round`` (set by Flower's strategy) and, when ``privacy.trainable`` is not ``all``,
  ``exchange`` = ``trainable`` and ``frozen-digest`` (below).

**Only the trainable set travels.** With ``privacy.trainable`` other than ``all`` the frozen
parameters never change: they are the round-1 generator (the public ``model.init``), which
both sides already hold. So a request with ``exchange`` = ``trainable`` carries the whole
generator in round 1 and only the trainable parameters after it, plus ``frozen-digest``, the
sha256 of the frozen parameters the server holds (``frozen_digest``); the site checks its own
frozen parameters against it and refuses a mismatch, and refuses arrays that are neither the
whole generator nor exactly its trainable set. The site then replies with exactly the
trainable parameters, which the server aggregates and merges into its full generator
(``merge_trainable``). A request without ``exchange`` (an older server) means ``all``: whole
generators both ways.

A reply (site -> server) is exactly ``ARRAYS`` (the site's generator, or its trainable part
when the request says ``exchange`` = ``trainable``; empty when it declined) and ``METRICS``: a MetricRecord with exactly the keys of ``REPLY_METRICS``. Every one of them
is either DP-accounted or independent of patient data (the ``status`` of each entry says
which); losses, the number of patients sampled and wall time stay in the site's own log.

A config received from the server is PARSED, never resolved: plain YAML, and any OmegaConf
interpolation (``${...}``, e.g. ``${oc.env:HOME}``) is refused, so a server cannot make a site
read its own environment back into error messages or replies.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.common.config import Config, config_from_dict, config_to_yaml
from fedsynth.common.errors import ConfigError

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # record names (Flower's defaults)
CONFIG_YAML, RUN_DIR, ROUNDS, SERVER_ROUND = "config-yaml", "run-dir", "rounds", "server-round"
EXCHANGE, FROZEN_DIGEST = "exchange", "frozen-digest"  # optional request keys (see above)
EXCHANGE_ALL, EXCHANGE_TRAINABLE = "all", "trainable"  # values of EXCHANGE
WEIGHT_KEY = "num-examples"  # FedAvg's weight

# Privacy status of a reply value.
PUBLIC = "independent of patient data"
ACCOUNTED = "a function of the DP mechanism's public parameters (config, patient count, steps)"
PATIENT_COUNT = "the site's patient count N: public under add/remove adjacency with N public"


@dataclass(frozen=True)
class ReplyMetric:
    """One key of the reply's MetricRecord: its type, meaning and privacy status."""

    kind: type  # int, float, or list (of floats/ints)
    meaning: str
    status: str


REPLY_METRICS: dict[str, ReplyMetric] = {
    WEIGHT_KEY: ReplyMetric(int, "patients at the site (FedAvg weight)", PATIENT_COUNT),
    "site-index": ReplyMetric(
        int, "k of the site's name site-<k> (node config); -1: unnamed", PUBLIC
    ),
    "declined": ReplyMetric(int, "1: the site refused to train (privacy budget)", PUBLIC),
    "resent": ReplyMetric(int, "1: the stored reply to a repeated request", PUBLIC),
    "steps": ReplyMetric(int, "local steps taken this round (0 or local_steps)", PUBLIC),
    "steps-total": ReplyMetric(int, "local steps taken at the site in all", PUBLIC),
    "epsilon": ReplyMetric(float, "epsilon spent so far at delta (inf without DP)", ACCOUNTED),
    "delta": ReplyMetric(float, "the delta of epsilon", PUBLIC),
    "noise-multiplier": ReplyMetric(
        float, "joint D+G mechanism as accounted, sigma/sqrt(2) (0 without DP)", ACCOUNTED
    ),
    "step-noise-multiplier": ReplyMetric(
        float, "sigma added in each of the D and G steps (0 without DP)", ACCOUNTED
    ),
    "max-grad-norm": ReplyMetric(float, "per-patient clipping bound C (0 without DP)", PUBLIC),
    "sample-rate": ReplyMetric(float, "Poisson rate q = batch_size / N", PATIENT_COUNT),
    "history-noise-multiplier": ReplyMetric(list, "accountant history: multipliers", ACCOUNTED),
    "history-sample-rate": ReplyMetric(list, "accountant history: sample rates", ACCOUNTED),
    "history-steps": ReplyMetric(list, "accountant history: steps", PUBLIC),
}
HISTORY_KEYS = ("history-noise-multiplier", "history-sample-rate", "history-steps")


# -- request ----------------------------------------------------------------------------


def request_config(cfg: Config, run_dir: str, rounds: int) -> ConfigRecord:
    """The ConfigRecord of every train request (Flower adds ``server-round``)."""
    return ConfigRecord({CONFIG_YAML: config_to_yaml(cfg), RUN_DIR: run_dir, ROUNDS: rounds})


@dataclass(frozen=True)
class TrainRequest:
    """One train request, parsed. ``weights``: generator state, name -> float32 array."""

    cfg: Config
    server_round: int
    rounds: int
    run_dir: str
    weights: dict[str, np.ndarray]
    digest: str  # sha256 of the global weights: identifies a repeated request
    exchange: str = EXCHANGE_ALL  # EXCHANGE_TRAINABLE: reply with the trainable set only
    frozen_digest: str = ""  # with EXCHANGE_TRAINABLE: the server's frozen_digest
    config_text: str = ""  # the YAML as received: the same text is the same config


def parse_request(content: RecordDict) -> TrainRequest:
    """A train request's content -> TrainRequest; ConfigError naming what is missing."""
    if CONFIG not in content.config_records or ARRAYS not in content.array_records:
        raise ConfigError(
            "train message", f"needs records {CONFIG!r} and {ARRAYS!r}, got {sorted(content)}"
        )
    config = content.config_records[CONFIG]
    missing = [k for k in (CONFIG_YAML, SERVER_ROUND, ROUNDS, RUN_DIR) if k not in config]
    if missing:
        raise ConfigError(missing[0], "missing from the train message's config record")
    weights = weights_of(content.array_records[ARRAYS])
    exchange = str(config.get(EXCHANGE, EXCHANGE_ALL))
    if exchange not in (EXCHANGE_ALL, EXCHANGE_TRAINABLE):
        raise ConfigError(
            EXCHANGE, f"must be {EXCHANGE_ALL!r} or {EXCHANGE_TRAINABLE!r}, got {exchange!r}"
        )
    text = str(config[CONFIG_YAML])
    return TrainRequest(
        cfg=parse_config_yaml(text),
        server_round=int(config[SERVER_ROUND]),  # type: ignore[arg-type]
        rounds=int(config[ROUNDS]),  # type: ignore[arg-type]
        run_dir=str(config[RUN_DIR]),
        weights=weights,
        digest=weights_digest(weights),
        exchange=exchange,
        frozen_digest=str(config.get(FROZEN_DIGEST, "")),
        config_text=text,
    )


def parse_config_yaml(text: str) -> Config:
    """A received config: plain YAML, validated, never resolved (interpolation refused).

    A fresh copy each call (the caller may modify it) of a cached parse: a simulation worker
    receives the same text for every site and round, and OmegaConf's validation of it cost
    ~0.2 s of CPU per site-round (measured in-process, demo config).
    """
    return copy.deepcopy(_parse_config_yaml(text))


@functools.lru_cache(maxsize=4)
def _parse_config_yaml(text: str) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(CONFIG_YAML, f"not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(CONFIG_YAML, f"must be a mapping, got {type(data).__name__}")
    for key, value in _leaves(data):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(
                key, "interpolation ('${...}') is not accepted in a config received over the wire"
            )
    return config_from_dict(data)


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, Mapping):
        for k, v in data.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), data


# -- generator arrays ---------------------------------------------------------------------


def generator_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def weights_of(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """name -> numpy array of every Array in ``arrays`` (see ``array_of``)."""
    return {k: array_of(a) for k, a in arrays.items()}


_NPY_V1 = b"\x93NUMPY\x01"  # .npy magic and format version 1 (what np.save writes here)
_NPY_DESCR = re.compile(rb"'descr': *'([^']+)'")
_NPY_SHAPE = re.compile(rb"'shape': *\(([^)]*)\)")


def array_of(array: Array) -> np.ndarray:
    """``array.numpy()``: the same new, writable array, without ``np.load``'s header parsing
    (``ast.literal_eval``, ~4x the cost of the copy for these small arrays; the server
    converts ~400 arrays per round on its critical path). Anything but a C-order .npy v1
    buffer whose length fits its header goes to ``array.numpy()`` (and its errors)."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:7] == _NPY_V1:
        size = int.from_bytes(data[8:10], "little")
        header = data[10 : 10 + size]
        descr, shape = _NPY_DESCR.search(header), _NPY_SHAPE.search(header)
        if descr and shape and b"'fortran_order': False" in header:
            try:
                dims = tuple(int(n) for n in shape.group(1).split(b",") if n.strip())
                dtype = np.dtype(descr.group(1).decode("ascii"))
            except (TypeError, ValueError):
                return array.numpy()  # a header np.load would refuse: its own error
            fits = len(data) - 10 - size == dtype.itemsize * math.prod(dims)
            if fits and not dtype.hasobject:
                return np.frombuffer(data, dtype, offset=10 + size).reshape(dims).copy()
    return array.numpy()


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(np.ascontiguousarray(weights[k]).tobytes())
    return h.hexdigest()


def trainable_part(
    weights: Mapping[str, np.ndarray], trainable: Iterable[str]
) -> dict[str, np.ndarray]:
    """The arrays of ``weights`` named in ``trainable`` (what travels after round 1)."""
    return {k: weights[k] for k in sorted(trainable)}


def frozen_digest(weights: Mapping[str, np.ndarray], trainable: Iterable[str]) -> str:
    """sha256 of the arrays of ``weights`` NOT in ``trainable``: the frozen parameters."""
    keep = set(trainable)
    return weights_digest({k: v for k, v in weights.items() if k not in keep})


def merge_trainable(
    full: Mapping[str, np.ndarray], part: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``full`` with the arrays of ``part`` (the aggregated trainable set) put in; KeyError if
    ``part`` names an array ``full`` lacks (the server checked the keys before)."""
    unknown = sorted(set(part) - set(full))
    if unknown:
        raise KeyError(f"arrays outside the generator: {unknown[:5]}")
    return {**full, **part}


def received_problems(
    keys: Iterable[str], full: Iterable[str], trainable: Iterable[str] | None
) -> list[str]:
    """How the array names of a request differ from what a site accepts: its whole generator
    (``full``), or with a trainable set exactly ``trainable``; [] if they fit."""
    got, whole = set(keys), set(full)
    if got == whole or (trainable is not None and got == set(trainable)):
        return []
    candidates = [whole] if trainable is None else [whole, set(trainable)]
    want = min(candidates, key=lambda c: len(got ^ c))  # name the nearer one in the message
    extra, missing = sorted(got - want), sorted(want - got)
    what = "the whole generator" if want == whole else "its trainable set"
    return [
        f"{len(got)} arrays, not {what} ({len(want)}): extra {extra[:5]}, missing {missing[:5]}"
    ]


# -- reply --------------------------------------------------------------------------------


def reply_content(weights: Mapping[str, np.ndarray] | None, metrics: dict[str, Any]) -> RecordDict:
    """The reply: the generator (empty when declined) and exactly ``REPLY_METRICS``.

    A key outside the spec is a programming error at the site: refuse to send it (it could
    carry something unaccounted)."""
    problems = metric_problems(metrics)
    if problems:
        raise ValueError(f"reply metrics do not match the wire format: {'; '.join(problems)}")
    return RecordDict({ARRAYS: generator_record(weights or {}), METRICS: MetricRecord(metrics)})


def metric_problems(metrics: Mapping[str, Any]) -> list[str]:
    """How ``metrics`` differs from ``REPLY_METRICS`` (keys and types); [] if it matches."""
    problems = []
    extra = sorted(set(metrics) - set(REPLY_METRICS))
    missing = sorted(set(REPLY_METRICS) - set(metrics))
    if extra or missing:
        problems.append(f"extra keys {extra[:5]}, missing keys {missing[:5]}")
    for key in set(metrics) & set(REPLY_METRICS):
        kind, value = REPLY_METRICS[key].kind, metrics[key]
        ok = (
            isinstance(value, list)
            if kind is list
            else isinstance(value, (int, float)) and not isinstance(value, (bool, list))
        )
        if kind is int and ok and isinstance(value, float) and not value.is_integer():
            ok = False
        if not ok:
            problems.append(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    return problems


def reply_problems(content: RecordDict) -> list[str]:
    """Structural problems of a reply: exactly {ARRAYS: ArrayRecord, METRICS: MetricRecord}
    and the metrics of the spec. (The arrays are checked against the generator sent.)"""
    records = {name: type(rec).__name__ for name, rec in content.items()}
    if records != {ARRAYS: "ArrayRecord", METRICS: "MetricRecord"}:
        return [
            f"expected records {{{ARRAYS!r}: ArrayRecord, {METRICS!r}: MetricRecord}}, got {records}"
        ]
    return metric_problems(dict(content.metric_records[METRICS]))
