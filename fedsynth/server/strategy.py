"""Generator-only aggregation with update checks, built on Flower's FedAvg family.

Every site reply is screened before Flower aggregates it: exactly one ArrayRecord and one
MetricRecord, the MetricRecord carrying the keys of ``REQUIRED_METRICS``, array keys, shapes
and dtypes identical to the global generator sent this round, and only finite values. A
reply that fails is refused (logged, recorded, dropped); a site that declined (privacy budget
spent) or failed (an error reply) or did not answer in time is recorded too. The accepted
replies then go to Flower's own ``FedAvg`` / ``FedMedian`` / ``FedTrimmedAvg`` aggregation,
unchanged, through ``super().aggregate_train``. ``start()`` is Flower's loop, unchanged.

The outcome of each round (one ``SiteOutcome`` per site) is kept on ``last_round`` for the
ServerApp's per-round hook, which writes metrics and checkpoints.

``STRATEGIES`` maps each ``federation.aggregation`` name to its class: adding a strategy is a
class (a Flower strategy with ``GeneratorUpdates`` in front) and one line there.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from fedsynth.common.config import Config, FederationConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.sites import site_name

log = logging.getLogger(__name__)

# Keys every site reply's MetricRecord must carry (see fedsynth.client.app for meanings).
WEIGHT_KEY = "num-examples"
REQUIRED_METRICS: tuple[str, ...] = (
    WEIGHT_KEY,  # patients at the site: the FedAvg weight
    "site-index",  # >= 0: the site is "site-<index>"; -1: unnamed, the server uses the node id
    "declined",  # 1: the site refused to train (privacy budget), arrays are empty
    "steps",  # local steps taken this round
    "steps-total",  # local steps taken at the site over the whole run
    "epsilon",  # privacy spent at the site so far (inf without DP)
    "delta",
    "noise-multiplier",  # joint D+G mechanism as the accountant saw it (0 without DP)
    "step-noise-multiplier",  # sigma added in each of the D and G steps (0 without DP)
    "max-grad-norm",  # per-patient clipping bound C (0 without DP)
    "sample-rate",  # Poisson rate of patients per step
    "seconds",  # wall time of the local training
)
LOSS_PREFIX = "loss-"  # losses of the round, e.g. "loss-d"
HISTORY_PREFIX = "history-"  # the accountant's mechanism history, as lists (the only lists)

_SITE_IN_ERROR = re.compile(r"\[site ([A-Za-z0-9._-]+)\]")
_FLOWER_WRAPPER = "occurred. Message: "  # Flower's ClientAppException text before the cause
OK, DECLINED, FAILED, REFUSED, TIMED_OUT = "ok", "declined", "failed", "refused", "timed-out"


@dataclass
class SiteOutcome:
    """What one site did in one round, as the server saw it."""

    site: str
    node_id: int
    status: str  # OK | DECLINED | FAILED | REFUSED | TIMED_OUT
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    reply: dict[str, Any] = field(default_factory=dict)  # audit: what crossed the network
    history: dict[str, list[float]] = field(default_factory=dict)  # "history-*" metric lists

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "node_id": self.node_id,
            "status": self.status,
            "reason": self.reason,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
        }


@dataclass
class RoundOutcome:
    round: int
    sites: list[SiteOutcome]
    aggregated: bool  # False: too few accepted updates, the global generator is unchanged

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.sites)


def _json_number(v: float) -> float | None:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def array_spec(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) of every array in ``arrays``."""
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


def check_update(
    arrays: ArrayRecord, reference: Mapping[str, tuple[tuple[int, ...], str]]
) -> list[str]:
    """Problems that make ``arrays`` unfit to aggregate into a generator of spec ``reference``.

    Returns an empty list for a good update. Checks key set, shape and dtype of every array
    (e.g. a discriminator weight or a renamed layer is refused) and that all values are
    finite (NaN / inf from a diverged or malicious site are refused).
    """
    problems: list[str] = []
    keys, expected = set(arrays.keys()), set(reference)
    if keys != expected:
        extra, missing = sorted(keys - expected), sorted(expected - keys)
        problems.append(
            f"array keys differ from the generator's: extra {extra[:5]}, missing {missing[:5]}"
        )
        return problems
    for key, array in arrays.items():
        shape, dtype = reference[key]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            problems.append(
                f"{key}: shape {tuple(array.shape)} {array.dtype}, expected {shape} {dtype}"
            )
            continue
        values = array.numpy()
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            problems.append(f"{key}: {int((~np.isfinite(values)).sum())} non-finite values")
    return problems


def reply_audit(message: Message) -> dict[str, Any]:
    """Names and types of the records of a reply, its array keys and shapes, its metric keys."""
    content = message.content
    return {
        "records": {name: type(rec).__name__ for name, rec in content.items()},
        "arrays": {
            name: {k: list(a.shape) for k, a in rec.items()}
            for name, rec in content.array_records.items()
        },
        "metrics": sorted(k for rec in content.metric_records.values() for k in rec),
    }


class GeneratorUpdates:
    """Mixin over a Flower FedAvg-family strategy: screen replies, record outcomes.

    Must come before the Flower class in the bases, so that ``aggregate_train`` and
    ``configure_train`` here run first and hand over to Flower's with ``super()``.
    """

    min_sites: int
    round_offset: int
    last_round: RoundOutcome | None

    @classmethod
    def options(cls, fed: FederationConfig) -> dict[str, Any]:
        """Constructor arguments of the Flower strategy beyond those every strategy gets."""
        return {}

    def _setup(self, *, min_sites: int, round_offset: int) -> None:
        if min_sites < 1:
            raise ConfigError("federation.min_sites", f"must be >= 1, got {min_sites}")
        self.min_sites = min_sites
        self.round_offset = round_offset  # rounds completed before this start() (resume)
        self.last_round = None
        self._reference: dict[str, tuple[tuple[int, ...], str]] = {}
        self._sent_to: list[int] = []
        self._node_sites: dict[int, str] = {}  # node id -> site name, learnt from replies

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = array_spec(arrays)
        messages = list(
            super().configure_train(server_round + self.round_offset, arrays, config, grid)
        )  # type: ignore[misc]
        self._sent_to = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        replies = list(replies)
        outcomes, accepted = self.screen_replies(replies)
        answered = {m.metadata.src_node_id for m in replies}
        for node in self._sent_to:
            if node not in answered:
                site = self._node_sites.get(node, f"node-{node}")
                log.warning(
                    "round %d: %s (node %d) did not answer in time", server_round, site, node
                )
                outcomes.append(
                    SiteOutcome(site, node, TIMED_OUT, "no reply before the round timeout")
                )
        arrays = None
        if len(accepted) >= self.min_sites:
            arrays, _ = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        else:
            log.warning(
                "round %d: %d accepted updates, fewer than federation.min_sites=%d; "
                "the global generator stays as it was",
                server_round, len(accepted), self.min_sites,
            )  # fmt: skip
        outcomes.sort(key=lambda o: o.site)
        self.last_round = RoundOutcome(server_round, outcomes, aggregated=arrays is not None)
        return arrays, round_metrics(self.last_round)

    def screen_replies(self, replies: list[Message]) -> tuple[list[SiteOutcome], list[Message]]:
        """Classify each reply; return all outcomes and the replies fit to aggregate."""
        outcomes: list[SiteOutcome] = []
        accepted: list[Message] = []
        metric_keys: set[str] | None = None
        for msg in replies:
            outcome = self._screen_one(msg)
            if outcome.status == OK:
                keys = set(outcome.metrics)
                metric_keys = keys if metric_keys is None else metric_keys
                if keys != metric_keys:  # Flower's aggregation needs identical metric keys
                    outcome.status, outcome.reason = REFUSED, "metric keys differ from other sites'"
                else:
                    accepted.append(msg)
            if outcome.status in (REFUSED, FAILED):
                log.error(
                    "%s (node %d) %s: %s",
                    outcome.site,
                    outcome.node_id,
                    outcome.status,
                    outcome.reason,
                )
            outcomes.append(outcome)
        return outcomes, accepted

    def _screen_one(self, msg: Message) -> SiteOutcome:
        node = msg.metadata.src_node_id
        site = self._node_sites.get(node, f"node-{node}")
        if msg.has_error():
            reason = short_reason(str(msg.error.reason))
            named = _SITE_IN_ERROR.search(reason)  # fedsynth.client.app.SiteError names its site
            if named and node not in self._node_sites:
                site = self._node_sites[node] = named.group(1)
            return SiteOutcome(site, node, FAILED, reason)
        audit = reply_audit(msg)
        content = msg.content
        if len(content.metric_records) != 1 or len(content.array_records) != 1 or len(content) != 2:
            return SiteOutcome(
                site,
                node,
                REFUSED,
                f"expected one ArrayRecord and one MetricRecord, got {audit['records']}",
                reply=audit,
            )
        metrics = {k: v for k, v in next(iter(content.metric_records.values())).items()}
        missing = [k for k in REQUIRED_METRICS if k not in metrics]
        lists = [
            k
            for k, v in metrics.items()
            if isinstance(v, list) and not k.startswith(HISTORY_PREFIX)
        ]
        if missing or lists:
            return SiteOutcome(
                site, node, REFUSED, f"MetricRecord lacks {missing} or holds lists", reply=audit
            )
        site = _site_name(metrics["site-index"], node)
        self._node_sites[node] = site
        scalars = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        outcome = SiteOutcome(site, node, OK, metrics=scalars, reply=audit)
        outcome.history = {k: list(v) for k, v in metrics.items() if isinstance(v, list)}
        if metrics["declined"]:
            outcome.status, outcome.reason = DECLINED, "privacy budget would be exceeded"
            return outcome
        if not metrics[WEIGHT_KEY] > 0:
            outcome.status, outcome.reason = REFUSED, f"{WEIGHT_KEY} must be > 0"
            return outcome
        problems = check_update(next(iter(content.array_records.values())), self._reference)
        if problems:
            outcome.status, outcome.reason = REFUSED, "; ".join(problems[:3])
        return outcome


def short_reason(reason: str) -> str:
    """The client's own error message out of Flower's/Ray's wrapping (tracebacks, colours)."""
    if _FLOWER_WRAPPER in reason:
        reason = reason.rsplit(_FLOWER_WRAPPER, 1)[1]
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason).strip()
    return reason[:-2].rstrip() if reason.endswith("'>") else reason


def _site_name(index: float, node_id: int) -> str:
    return site_name(int(index)) if index >= 0 else f"node-{node_id}"


def round_metrics(outcome: RoundOutcome) -> MetricRecord:
    """Aggregated metrics of a round: site counts, worst-case epsilon, weighted mean losses."""
    ok = [s for s in outcome.sites if s.status == OK]
    record = MetricRecord(
        {
            f"sites-{status}": outcome.count(status)
            for status in (OK, DECLINED, FAILED, REFUSED, TIMED_OUT)
        }
    )
    record["aggregated"] = int(outcome.aggregated)
    eps = [s.metrics["epsilon"] for s in outcome.sites if "epsilon" in s.metrics]
    if eps:
        record["epsilon-max"] = max(eps)
    total = sum(s.metrics[WEIGHT_KEY] for s in ok)
    for key in sorted({k for s in ok for k in s.metrics if k.startswith(LOSS_PREFIX)}):
        record[key] = sum(s.metrics[key] * s.metrics[WEIGHT_KEY] for s in ok) / total
    return record


def _no_metric_average(records: list[Any], weight_key: str) -> MetricRecord:
    return MetricRecord()


class GeneratorFedAvg(GeneratorUpdates, FedAvg):
    """FedAvg of generator weights, weighted by patients per site."""


class GeneratorFedMedian(GeneratorUpdates, FedMedian):
    """Coordinate-wise median of generator weights (robust to a minority of bad sites)."""


class GeneratorTrimmedMean(GeneratorUpdates, FedTrimmedAvg):
    """Coordinate-wise trimmed mean; ``beta`` = fraction cut from each tail."""

    @classmethod
    def options(cls, fed: FederationConfig) -> dict[str, Any]:
        return {"beta": fed.trim_fraction}


# federation.aggregation -> strategy class.
STRATEGIES: dict[str, type[GeneratorUpdates]] = {
    "fedavg": GeneratorFedAvg,
    "fedmedian": GeneratorFedMedian,
    "trimmed-mean": GeneratorTrimmedMean,
}


def strategy_class(name: str) -> type[GeneratorUpdates]:
    """The class registered as ``name``; ConfigError listing the valid names otherwise."""
    if name not in STRATEGIES:
        raise ConfigError(
            "federation.aggregation",
            f"unknown aggregation {name!r}; valid: {', '.join(sorted(STRATEGIES))}",
        )
    return STRATEGIES[name]


def build_strategy(cfg: Config, *, expected_sites: int, round_offset: int = 0) -> FedAvg:
    """The strategy of ``cfg.federation.aggregation``, training every connected site each round.

    ``expected_sites``: the strategy waits until that many sites are connected before the
    first round. Federated evaluation is off (held-out evaluation happens at the server).
    """
    fed = cfg.federation
    cls = strategy_class(fed.aggregation)
    if fed.min_sites > expected_sites:
        raise ConfigError(
            "federation.min_sites",
            f"{fed.min_sites} exceeds the {expected_sites} sites of the federation",
        )
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": expected_sites,
        "min_available_nodes": expected_sites,
        "weighted_by_key": WEIGHT_KEY,
        # Flower would average every metric (epsilon too) and zip the history lists of sites
        # with different lengths; round_metrics summarises a round instead.
        "train_metrics_aggr_fn": _no_metric_average,
    }
    strategy = cls(**common, **cls.options(fed))  # type: ignore[call-arg]
    strategy._setup(min_sites=fed.min_sites, round_offset=round_offset)
    return strategy  # type: ignore[return-value]
