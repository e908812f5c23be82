"""Generator-only aggregation with update checks, built on Flower's FedAvg family.

Every site reply is screened before Flower aggregates it against the wire format
(``fedsynth.common.wire``, not against whichever site answered first): exactly its two
records, the MetricRecord carrying exactly the keys and types of ``wire.REPLY_METRICS``, array
keys, shapes and dtypes identical to the global generator sent this round, and only finite
values. A
reply that fails is refused (logged, recorded, dropped); a site that declined (privacy budget
spent) or failed (an error reply) or did not answer in time is recorded too. The accepted
replies then go to Flower's own ``FedAvg`` / ``FedMedian`` / ``FedTrimmedAvg`` aggregation,
unchanged, through ``super().aggregate_train``. ``start()`` is Flower's loop, unchanged.

The server trusts no single site (``fedsynth.server.bounds``, docs/robustness.md): each
update's norm is bounded relative to the global model (clipped or refused beyond
``federation.update_norm_factor``), each site's weight is capped at the patients it declared in
its first round (or all weigh the same), and an aggregate with non-finite values is dropped
(the global generator stays, the round is recorded as failed with the reason). Sites are
keyed by the node id the engine authenticated; the site name a reply claims is only a label,
bound to the first node that claims it (or to the node ``federation.site_nodes`` lists): a
second node claiming a bound name, or two nodes claiming one name in one round, are refused.

With ``privacy.trainable`` other than ``all`` (``trainable`` names given to
``build_strategy``) only the trainable parameters travel after round 1, both ways
(``fedsynth.common.wire``): replies are screened against the trainable set, Flower's rule
aggregates them, and the result is merged into the full generator kept here, which Flower's
loop then holds, checkpoints and evaluates. Frozen parameters stay the round-1 generator's.

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
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, MultiKrum

from fedsynth.common import wire
from fedsynth.common.config import Config, FederationConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.sites import site_name
from fedsynth.server import bounds

log = logging.getLogger(__name__)

# The keys of every site reply's MetricRecord: the wire format's (meanings and privacy status
# in fedsynth.common.wire.REPLY_METRICS).
WEIGHT_KEY = wire.WEIGHT_KEY
REQUIRED_METRICS: tuple[str, ...] = tuple(wire.REPLY_METRICS)
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
    claimed: bool = False  # the reply named a site (a claim, checked against the node id)

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
    aggregated: bool  # False: the global generator is unchanged (see ``reason``)
    reason: str = ""  # why the round did not aggregate

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
            f"array keys differ from the generator's arrays requested: extra {extra[:5]}, "
            f"missing {missing[:5]}"
        )
        return problems
    for key, array in arrays.items():
        shape, dtype = reference[key]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            problems.append(
                f"{key}: shape {tuple(array.shape)} {array.dtype}, expected {shape} {dtype}"
            )
            continue
        try:
            values = wire.array_of(array)
        except ValueError as e:  # a buffer numpy cannot read
            problems.append(f"{key}: unreadable array data ({e})")
            continue
        if values.shape != shape or str(values.dtype) != dtype:  # the bytes, not the label
            problems.append(
                f"{key}: data hold {values.shape} {values.dtype}, declared {shape} {dtype}"
            )
            continue
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
    _expected: int  # sites of the federation
    lr: float  # the sites' Adam learning rate (scale of the update bound)
    last_round: RoundOutcome | None
    declared: dict[str, float]  # site -> num-examples of its first round (weight cap)

    @classmethod
    def options(cls, fed: FederationConfig) -> dict[str, Any]:
        """Constructor arguments of the Flower strategy beyond those every strategy gets."""
        return {}

    @classmethod
    def check_sites(cls, fed: FederationConfig, sites: int) -> None:
        """ConfigError if the rule cannot do what it promises with ``sites`` sites."""

    def _setup(
        self,
        fed: FederationConfig,
        *,
        round_offset: int = 0,
        declared: Mapping[str, float] | None = None,
    ) -> None:
        if fed.min_sites < 1:
            raise ConfigError("federation.min_sites", f"must be >= 1, got {fed.min_sites}")
        self.fed = fed
        self.min_sites = fed.min_sites
        self.round_offset = round_offset  # rounds completed before this start() (resume)
        self.last_round = None
        self.declared = dict(declared or {})  # kept in the server state across a resume
        self.trainable: list[str] | None = None  # exchanged arrays; None: all (set_trainable)
        self._reference: dict[str, tuple[tuple[int, ...], str]] = {}
        self._global: dict[str, np.ndarray] | None = None  # exchanged global weights this round
        self._full: dict[str, np.ndarray] = {}  # the whole global generator this round
        self._bound = math.inf
        self._sent_to: list[int] = []
        self._owners: dict[str, int] = {}  # site name -> the node id that owns it
        self._names: dict[int, str] = {}  # node id -> its site name (bound)
        self._labels: dict[int, str] = {}  # node id -> name seen in an error (unverified)

    def set_trainable(self, names: Iterable[str] | None) -> None:
        """Exchange only the arrays ``names`` after round 1 (None: the whole generator)."""
        self.trainable = None if names is None else sorted(names)

    def set_global(self, arrays: ArrayRecord) -> None:
        """The global generator of this round: the exchanged part of it is the reference for
        the replies' keys, shapes and update norms (P of the bound counts only it)."""
        self._full = wire.weights_of(arrays)
        missing = sorted(set(self.trainable or ()) - set(self._full))
        if missing:
            raise ConfigError(
                "privacy.trainable", f"names arrays the generator does not have: {missing[:5]}"
            )
        exchanged = (
            self._full
            if self.trainable is None
            else wire.trainable_part(self._full, self.trainable)
        )
        self._global = exchanged
        self._reference = {k: (tuple(a.shape), str(a.dtype)) for k, a in exchanged.items()}
        self._bound = bounds.norm_bound(
            self._global, self.fed.update_norm_factor, lr=self.lr, steps=self.fed.local_steps
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.set_global(arrays)
        server_round += self.round_offset
        if self.trainable is not None:
            config[wire.EXCHANGE] = wire.EXCHANGE_TRAINABLE
            config[wire.FROZEN_DIGEST] = wire.frozen_digest(self._full, self.trainable)
            if server_round > 1:  # the sites hold the round-1 generator's frozen parameters
                arrays = wire.generator_record(self._global or {})
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
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
                site = self._label(node)
                log.warning(
                    "round %d: %s (node %d) did not answer in time", server_round, site, node
                )
                outcomes.append(
                    SiteOutcome(site, node, TIMED_OUT, "no reply before the round timeout")
                )
        arrays, reason = None, ""
        if len(accepted) >= self.min_sites:
            self.warn_if_weak(server_round, len(accepted))
            arrays, _ = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
            merged = self._merged(wire.weights_of(arrays) if arrays is not None else {})
            bad = bounds.non_finite_keys(merged)
            if bad:  # e.g. finite updates whose weighted sum overflows float32
                arrays, reason = None, f"the aggregate has non-finite values in {bad[:3]}"
            elif arrays is not None:
                arrays = wire.generator_record(merged)
        else:
            reason = f"{len(accepted)} accepted updates, fewer than federation.min_sites={self.min_sites}"
        if reason:
            log.warning(
                "round %d failed: %s; the global generator stays as it was", server_round, reason
            )
        outcomes.sort(key=lambda o: o.site)
        self.last_round = RoundOutcome(server_round, outcomes, arrays is not None, reason)
        return arrays, round_metrics(self.last_round)

    def _merged(self, aggregate: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The aggregate of the exchanged arrays put into the full global generator."""
        if self.trainable is None or not self._full:  # whole generators (or a unit test)
            return aggregate
        return wire.merge_trainable(self._full, aggregate)

    def warn_if_weak(self, server_round: int, accepted: int) -> None:
        """Hook: log when this round's rule cannot protect what it promises (see subclasses)."""

    @property
    def owners(self) -> dict[str, int]:
        """Site name -> the node id bound to it so far."""
        return dict(self._owners)

    def _label(self, node: int) -> str:
        return self._names.get(node) or self._labels.get(node) or f"node-{node}"

    def screen_replies(self, replies: list[Message]) -> tuple[list[SiteOutcome], list[Message]]:
        """Classify each reply; return all outcomes and the replies fit to aggregate."""
        outcomes = [self._screen_one(msg) for msg in replies]
        self._resolve_identities(outcomes)
        accepted: list[Message] = []
        for msg, outcome in zip(replies, outcomes, strict=True):
            if outcome.status == OK:
                self._weigh(msg, outcome)
            if outcome.status == OK:
                accepted.append(msg)
            if outcome.status in (REFUSED, FAILED):
                log.error(
                    "%s (node %d) %s: %s",
                    outcome.site,
                    outcome.node_id,
                    outcome.status,
                    outcome.reason,
                )
        return outcomes, accepted

    def _resolve_identities(self, outcomes: list[SiteOutcome]) -> None:
        """Bind claimed site names to node ids; refuse claims of a name another node holds.

        The node id is what the engine authenticated (in deployment, bound to the SuperNode's
        key); the name is only what the reply says. A refused claimant is labelled by its
        node id so that it cannot write into the claimed site's rows or privacy entry.
        """
        claims: dict[str, set[int]] = {}
        for o in outcomes:
            if o.claimed:
                claims.setdefault(o.site, set()).add(o.node_id)
        for o in outcomes:
            if not o.claimed:
                continue
            problem = self._identity_problem(o.node_id, o.site, claims[o.site])
            if problem:
                o.status, o.reason, o.site = REFUSED, problem, f"node-{o.node_id}"
            else:
                self._owners[o.site], self._names[o.node_id] = o.node_id, o.site

    def _identity_problem(self, node: int, name: str, claimants: set[int]) -> str:
        allowed = self.fed.site_nodes
        if allowed:
            if name not in allowed:
                return f"claims to be {name}, which federation.site_nodes does not list"
            if allowed[name] != node:
                return f"claims to be {name}, which federation.site_nodes binds to node {allowed[name]}"
            return ""
        owner = self._owners.get(name)
        if owner is not None and owner != node:
            return f"claims to be {name}, which node {owner} is"
        if node in self._names and self._names[node] != name:
            return f"was {self._names[node]}, now claims to be {name}"
        if owner is None and len(claimants) > 1:
            others = sorted(claimants - {node})
            return f"claims to be {name}, as node(s) {others} do this round: one name, one node"
        return ""

    def _weigh(self, msg: Message, outcome: SiteOutcome) -> None:
        """Set the reply's aggregation weight: capped at the site's first declared count, or
        1 for every site with ``federation.weighting=equal``."""
        claimed = outcome.metrics[WEIGHT_KEY]
        first = self.declared.get(outcome.site)
        if first is None:
            self.declared[outcome.site] = claimed
        weight = 1.0 if self.fed.weighting == "equal" else bounds.capped_weight(claimed, first)
        if weight < claimed and self.fed.weighting != "equal":
            log.warning(
                "%s (node %d) claims %g examples, more than the %g it declared in its first "
                "round; weighted as %g", outcome.site, outcome.node_id, claimed, first, weight,
            )  # fmt: skip
        outcome.metrics["weight"] = weight
        next(iter(msg.content.metric_records.values()))[WEIGHT_KEY] = weight

    def _screen_one(self, msg: Message) -> SiteOutcome:
        node = msg.metadata.src_node_id
        site = self._label(node)
        if msg.has_error():
            reason = short_reason(str(msg.error.reason))
            named = _SITE_IN_ERROR.search(reason)  # fedsynth.client.app.SiteError names its site
            if named and node not in self._names:  # a label only: it is not verified
                site = self._labels[node] = named.group(1)
            return SiteOutcome(site, node, FAILED, reason)
        audit = reply_audit(msg)
        content = msg.content
        problems = wire.reply_problems(content)
        if problems:
            return SiteOutcome(site, node, REFUSED, "; ".join(problems[:3]), reply=audit)
        metrics = dict(content.metric_records[wire.METRICS])
        site = _site_name(metrics["site-index"], node)
        scalars = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        outcome = SiteOutcome(site, node, OK, metrics=scalars, reply=audit, claimed=True)
        outcome.history = {k: list(v) for k, v in metrics.items() if isinstance(v, list)}
        if metrics["declined"]:
            outcome.status, outcome.reason = DECLINED, "privacy budget would be exceeded"
            return outcome
        count = float(metrics[WEIGHT_KEY])
        if not (math.isfinite(count) and count > 0):
            outcome.status, outcome.reason = (
                REFUSED,
                f"{WEIGHT_KEY} must be finite and > 0, got {count}",
            )
            return outcome
        name, arrays = wire.ARRAYS, content.array_records[wire.ARRAYS]
        problems = check_update(arrays, self._reference)
        if problems:
            outcome.status, outcome.reason = REFUSED, "; ".join(problems[:3])
            return outcome
        self._bound_update(content, name, outcome)
        return outcome

    def _bound_update(self, content: Any, name: str, outcome: SiteOutcome) -> None:
        """Measure the update's norm against the global weights; clip or refuse it beyond
        the bound (``federation.update_norm_factor``, ``federation.update_bound``)."""
        if self._global is None:  # no global generator sent (unit tests of the screening)
            return
        update = wire.weights_of(content[name])
        norm = bounds.update_norm(update, self._global)
        outcome.metrics["update-norm"] = norm
        if norm <= self._bound:
            return
        what = (
            f"update norm {norm:.4g} exceeds the bound {self._bound:.4g} "
            f"(federation.update_norm_factor={self.fed.update_norm_factor:g} x lr x local_steps"
            " x sqrt(parameters))"
        )
        if self.fed.update_bound == "refuse":
            outcome.status, outcome.reason = REFUSED, what
            return
        clipped = bounds.clip_update(update, self._global, self._bound)
        content[name] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in clipped.items()})
        outcome.reason = f"{what}: clipped to it"
        log.warning("%s (node %d): %s", outcome.site, outcome.node_id, outcome.reason)


def short_reason(reason: str) -> str:
    """The client's own error message out of Flower's/Ray's wrapping (tracebacks, colours)."""
    if _FLOWER_WRAPPER in reason:
        reason = reason.rsplit(_FLOWER_WRAPPER, 1)[1]
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason).strip()
    return reason[:-2].rstrip() if reason.endswith("'>") else reason


def _site_name(index: float, node_id: int) -> str:
    return site_name(int(index)) if index >= 0 else f"node-{node_id}"


def round_metrics(outcome: RoundOutcome) -> MetricRecord:
    """Aggregated metrics of a round: site counts and the worst-case epsilon. (Losses stay at
    the sites: they are data-dependent and unaccounted.)"""
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
    return record


def _no_metric_average(records: list[Any], weight_key: str) -> MetricRecord:
    return MetricRecord()


class GeneratorFedAvg(GeneratorUpdates, FedAvg):
    """FedAvg of generator weights, weighted by patients per site."""


class GeneratorFedMedian(GeneratorUpdates, FedMedian):
    """Coordinate-wise median of generator weights (robust to a minority of bad sites)."""


class GeneratorTrimmedMean(GeneratorUpdates, FedTrimmedAvg):
    """Coordinate-wise trimmed mean; ``beta`` = fraction cut from each tail.

    Flower cuts ``int(beta x n)`` updates from each tail: with fewer than ``ceil(1 / beta)``
    updates it cuts none and is a plain mean. ``check_sites`` refuses such a federation at
    config time; a round where fewer sites answer is logged.
    """

    @classmethod
    def options(cls, fed: FederationConfig) -> dict[str, Any]:
        return {"beta": fed.trim_fraction}

    @classmethod
    def check_sites(cls, fed: FederationConfig, sites: int) -> None:
        if int(fed.trim_fraction * sites) < 1:
            need = math.ceil(1 / fed.trim_fraction) if fed.trim_fraction > 0 else "any number of"
            raise ConfigError(
                "federation.trim_fraction",
                f"{fed.trim_fraction:g} x {sites} sites trims int({fed.trim_fraction * sites:g})"
                f" = 0 updates from each tail (a plain mean); trimmed-mean needs at least "
                f"{need} sites at this fraction, or trim_fraction >= {1 / sites:.3g}",
            )

    def warn_if_weak(self, server_round: int, accepted: int) -> None:
        if int(self.beta * accepted) < 1:
            log.warning(
                "round %d: %d accepted updates: trim_fraction %g trims none (plain mean)",
                server_round, accepted, self.beta,
            )  # fmt: skip


class GeneratorMultiKrum(GeneratorUpdates, MultiKrum):
    """Multi-Krum (Blanchard et al. 2017): average the ``n - f`` updates closest to their
    ``n - f - 2`` nearest neighbours; ``f`` = ``federation.byzantine_sites``.

    Tolerates ``f`` arbitrary updates when ``n >= 2f + 3`` (checked at config time).
    """

    @classmethod
    def options(cls, fed: FederationConfig) -> dict[str, Any]:
        return {"num_malicious_nodes": fed.byzantine_sites}

    @classmethod
    def check_sites(cls, fed: FederationConfig, sites: int) -> None:
        if sites < 2 * fed.byzantine_sites + 3:
            raise ConfigError(
                "federation.byzantine_sites",
                f"{fed.aggregation} tolerates f={fed.byzantine_sites} malicious sites only with "
                f"at least 2f + 3 = {2 * fed.byzantine_sites + 3} sites, the federation has {sites}",
            )

    def _setup(self, fed: FederationConfig, **kw: Any) -> None:
        super()._setup(fed, **kw)
        self.num_nodes_to_select = self.selected(fed)

    def selected(self, fed: FederationConfig) -> int:
        return max(1, self._expected - fed.byzantine_sites)


class GeneratorKrum(GeneratorMultiKrum):
    """Krum: the one update closest to its ``n - f - 2`` nearest neighbours becomes the model."""

    def selected(self, fed: FederationConfig) -> int:
        return 1


# federation.aggregation -> strategy class.
STRATEGIES: dict[str, type[GeneratorUpdates]] = {
    "fedavg": GeneratorFedAvg,
    "fedmedian": GeneratorFedMedian,
    "trimmed-mean": GeneratorTrimmedMean,
    "krum": GeneratorKrum,
    "multikrum": GeneratorMultiKrum,
}


def strategy_class(name: str) -> type[GeneratorUpdates]:
    """The class registered as ``name``; ConfigError listing the valid names otherwise."""
    if name not in STRATEGIES:
        raise ConfigError(
            "federation.aggregation",
            f"unknown aggregation {name!r}; valid: {', '.join(sorted(STRATEGIES))}",
        )
    return STRATEGIES[name]


def check_aggregation(cfg: Config, sites: int) -> type[GeneratorUpdates]:
    """The registered class of ``cfg``'s aggregation, checked against ``sites`` sites:
    ConfigError before a run writes anything."""
    cls = strategy_class(cfg.federation.aggregation)
    cls.check_sites(cfg.federation, sites)
    return cls


def build_strategy(
    cfg: Config,
    *,
    expected_sites: int,
    round_offset: int = 0,
    declared: Mapping[str, float] | None = None,
    trainable: Iterable[str] | None = None,
) -> FedAvg:
    """The strategy of ``cfg.federation.aggregation``, training every connected site each round.

    ``expected_sites``: the strategy waits until that many sites are connected before the
    first round. Federated evaluation is off (held-out evaluation happens at the server).
    ``declared``: each site's first-round patient count (weight cap) of a resumed run.
    ``trainable``: the generator's parameters ``privacy.trainable`` trains (None: ``all``);
    only they are exchanged after round 1 and aggregated.
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
    cls.check_sites(fed, expected_sites)
    strategy = cls(**common, **cls.options(fed))  # type: ignore[call-arg]
    strategy._expected = expected_sites
    strategy.lr = cfg.train.lr
    strategy._setup(fed, round_offset=round_offset, declared=declared)
    strategy.set_trainable(trainable)
    return strategy  # type: ignore[return-value]
