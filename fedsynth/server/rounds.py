"""What the server writes after every round: checkpoint, metrics rows, audit rows, state.

``RoundRecorder`` is passed to Flower's ``Strategy.start`` as its ``evaluate_fn``, which
Flower calls after every round with the new global generator: the hook where a round ends,
without copying Flower's loop. The hook only takes a snapshot of the round and hands it to
one background writer thread, so that the next round starts at once: held-out evaluation,
sample grid, checkpoint and the fsynced commit of round r run while the sites train round
r + 1 (measured by benchmarks/bench_federation.py: they cost a fixed ~0.1-1 s per round
on the critical path before). A round's recording starts once the next round's messages
have left (``round_pushed``, called by the grid; at most ``RECORD_AFTER_PUSH_S`` later):
it is mostly Python and would otherwise hold the GIL while the main thread aggregates and
sends the next round (measured: 25-57 ms from the hook to the push, ~10 ms without it).
Rounds are written in order; ``wait()`` (called by the ServerApp when Flower's loop ends,
also on an error) drains the writer and re-raises its first error. A server killed with rounds still queued resumes from the last committed one,
as before. Files it writes in the run directory:

- ``metrics.jsonl``: per round one row per site (``"kind": "site"``: status, losses, epsilon,
  steps, time) and one aggregate row (``"kind": "round"``: site counts, weighted mean losses,
  worst-case epsilon, round time, held-out image quality when computed).
- ``replies.jsonl``: per round and site, the names and types of the records of the reply,
  its array keys and shapes and its metric keys: what crossed the network.
- ``privacy.json``: one entry per site (see ``fedsynth.server.privacy_report``), rewritten
  every round.
- checkpoints and ``server_state.json`` (see ``fedsynth.server.checkpointing``); with
  ``federation.release_ema`` > 0 also the EMA release (``fedsynth.server.release``), which is
  what the held-out evaluation, the sample grid and ``checkpoints/generator.safetensors``
  show; the round's aggregate stays the resume point and what the sites train from.
- ``tensorboard/``: the round row's numbers, each site's reported epsilon and the sample
  grid (``fedsynth.common.tracking``): only what reached the server; no per-site losses.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from fedsynth.common import wire
from fedsynth.common.config import Config
from fedsynth.common.gan.init import public_pretraining
from fedsynth.common.io.atomic import append_jsonl
from fedsynth.common.privacy.binding import PRIVACY_KEY, checkpoint_summary
from fedsynth.common.progress import progress_bar
from fedsynth.common.rundir import RunDir
from fedsynth.common.tracking import Tracker, site_epsilons, tensorboard_dir, training_scalars
from fedsynth.server import checkpointing
from fedsynth.server.privacy_report import site_privacy_entry, write_federated_privacy
from fedsynth.server.release import ReleaseEMA
from fedsynth.server.strategy import (
    DECLINED,
    OK,
    GeneratorUpdates,
    RoundOutcome,
    round_metrics,
)

log = logging.getLogger(__name__)

RECORD_AFTER_PUSH_S = 1.0  # longest a round's recording waits for the next round's push

# (round, weights) -> held-out metrics as fedsynth.common.gan.evaluation.evaluate_quality
# returns them ({"quality", "mean", "slices"}; {} when not due); may write sample images.
Evaluator = Callable[[int, dict[str, np.ndarray]], dict[str, Any]]


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def site_rows(outcome: RoundOutcome, local_steps: int) -> list[dict[str, Any]]:
    """One metrics.jsonl row per site of a round."""
    rows = []
    for s in outcome.sites:
        row: dict[str, Any] = {
            "round": outcome.round, "kind": "site", "step": outcome.round * local_steps,
            "site": s.site, "status": s.status,
        }  # fmt: skip
        if s.reason:
            row["reason"] = s.reason
        row.update({k.replace("-", "_"): _clean(v) for k, v in s.metrics.items()})
        rows.append(row)
    return rows


def round_row(
    outcome: RoundOutcome, metrics: MetricRecord, seconds: float, local_steps: int
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "round": outcome.round,
        "kind": "round",
        "step": outcome.round * local_steps,
    }
    row.update({k.replace("-", "_"): _clean(float(v)) for k, v in metrics.items()})  # type: ignore[arg-type]
    if outcome.reason:
        row["reason"] = outcome.reason  # why the global generator did not change
    row["epsilon"] = row.get("epsilon_max")  # worst site: the run's epsilon, as in central rows
    row["seconds"] = round(seconds, 3)
    return row


class RoundRecorder:
    """Flower ``evaluate_fn``: after each round, write its files and commit the state."""

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        state: checkpointing.ServerState,
        evaluator: Evaluator | None = None,
        progress: bool = True,
    ):
        self.run_dir, self.cfg, self.state = run_dir, cfg, state
        self.evaluator = evaluator
        self.strategy: GeneratorUpdates | None = None
        # The released generator (EMA over rounds when on), restored from the committed round.
        self.release = ReleaseEMA(
            cfg.federation.release_ema, checkpointing.load_release(run_dir, state)
        )
        # The public data model.init was pre-trained on: privacy.json names it (read once).
        self.pretrained_on = public_pretraining(cfg.model.init, {})
        self._round_started = time.perf_counter()
        local = cfg.federation.local_steps
        # A resumed server hides what a killed attempt logged after the committed round.
        self._purge = state.round * local + 1 if state.round else None
        self.tracker = Tracker(None)  # opened with the first round: nothing written before
        self.bar = progress_bar(
            total=cfg.federation.rounds, initial=state.round, desc="rounds", unit="round",
            leave=True, enabled=progress,
        )  # fmt: skip
        # One thread: rounds are evaluated, written and committed in order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsynth-rounds")
        self._pending: list[Future[None]] = []
        self._pushed = threading.Condition()
        self._pushes = 0  # rounds whose messages the grid sent so far
        self._draining = False  # wait() called: no further push to wait for

    def round_pushed(self) -> None:
        """The grid sent a round's messages: the previous round's recording may start."""
        with self._pushed:
            self._pushes += 1
            self._pushed.notify_all()

    def _after_push(self, pushes: int) -> None:
        with self._pushed:
            self._pushed.wait_for(
                lambda: self._pushes >= pushes or self._draining, timeout=RECORD_AFTER_PUSH_S
            )

    def drop_uncommitted(self) -> None:
        """Remove rows a killed server wrote for a round it did not commit."""
        run = RunDir(self.run_dir)
        for path in (run.metrics, run.replies):
            dropped = checkpointing.truncate_metrics(path, self.state.round)
            if dropped:
                log.info(
                    "dropped %d rows of uncommitted round %d from %s",
                    dropped,
                    self.state.round + 1,
                    path.name,
                )

    def __call__(self, flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Snapshot the round and queue its recording; returns at once (None: no metrics).

        ``seconds`` of a round is the time from the previous call to this one: the whole
        critical path of a round (sending, the sites' training, replies, aggregation).
        """
        now = time.perf_counter()
        if flower_round == 0:  # Flower's call before the first round
            self._round_started = now
            return None
        self._raise_failed()
        assert self.strategy is not None and self.strategy.last_round is not None
        outcome = self.strategy.last_round  # a new object each round: not mutated later
        weights = wire.weights_of(arrays)  # new arrays
        seconds, self._round_started = now - self._round_started, now
        # Copied here: the strategy changes them in the next round while the writer runs.
        identities = self._identities()
        with self._pushed:
            next_push = self._pushes + 1
        job = self._writer.submit(
            self._evaluate_and_record, outcome, weights, seconds, identities, next_push
        )
        self._pending.append(job)
        return None

    def _identities(self) -> tuple[dict[str, float], dict[str, int]] | None:
        """(declared example counts, site -> node id) of the strategy, copied."""
        if self.strategy is None:
            return None
        return dict(self.strategy.declared), dict(self.strategy.owners)

    def _evaluate_and_record(
        self,
        outcome: RoundOutcome,
        weights: dict[str, np.ndarray],
        seconds: float,
        identities: tuple[dict[str, float], dict[str, int]] | None,
        next_push: int = 0,
    ) -> None:
        self._after_push(next_push)
        released = self.release.update(weights, outcome.aggregated)
        quality = self.evaluator(outcome.round, released) if self.evaluator else {}
        self.record(outcome, weights, quality, seconds, identities=identities, released=released)

    def _raise_failed(self) -> None:
        """Re-raise the first error of a finished background recording (disk full, ...)."""
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()

    def wait(self) -> None:
        """Block until every queued round is recorded; re-raise the first error."""
        with self._pushed:
            self._draining = True
            self._pushed.notify_all()
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()

    def record(
        self,
        outcome: RoundOutcome,
        weights: dict[str, np.ndarray],
        quality: dict[str, Any],
        seconds: float,
        *,
        identities: tuple[dict[str, float], dict[str, int]] | None = None,
        released: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Checkpoint, rows, then the commit (see checkpointing's write order).

        ``identities``: the strategy's (declared counts, site owners) as copied when the
        round ended; None reads them from the strategy now. ``released``: the generator to
        release after this round (``self.release.update`` already applied); None applies it.
        """
        if released is None:
            released = self.release.update(weights, outcome.aggregated)
        local = self.cfg.federation.local_steps
        metrics = round_metrics(outcome)
        eps = float(metrics["epsilon-max"]) if "epsilon-max" in metrics else math.inf
        for s in outcome.sites:
            if s.status in (OK, DECLINED):  # an accountant report the site stands behind
                self.state.sites[s.site] = site_privacy_entry(
                    s.metrics, s.history, self.cfg.privacy.enabled
                )
        if not outcome.aggregated:  # before privacy.json, which names it
            self._record_unreleased(outcome)
        report = self.finish()  # privacy.json first: the checkpoint carries its digest
        extra = {"epsilon": _clean(eps), "delta": self.cfg.privacy.delta,
                 "dp_enabled": self.cfg.privacy.enabled, "federated": True,
                 "sites": len(outcome.sites),
                 **({PRIVACY_KEY: checkpoint_summary(report)} if report else {})}  # fmt: skip
        path = checkpointing.save_checkpoint(self.run_dir, self.cfg, outcome.round, weights, extra)
        self.state.release, self.state.release_rounds = "", 0
        if self.release.enabled:
            ema = {"release_ema": self.release.decay, "release_rounds": self.release.rounds}
            self.state.release = checkpointing.save_release(
                self.run_dir, self.cfg, outcome.round, released, {**extra, **ema}
            ).name
            self.state.release_rounds = self.release.rounds
        summary = round_row(outcome, metrics, seconds, local)
        summary.update(quality)
        run = RunDir(self.run_dir)
        for row in [*site_rows(outcome, local), summary]:
            run.append_metrics(row)  # non-finite -> null, as in central runs
        for s in outcome.sites:
            if s.reply:
                append_jsonl(run.replies, {"round": outcome.round, "site": s.site, **s.reply})
        identities = identities if identities is not None else self._identities()
        if identities is not None:  # weight caps survive a resume; who was which site
            self.state.declared = identities[0]
            self.state.site_nodes.update(identities[1])
        self.state.round = outcome.round
        self.state.checkpoint = path.name
        self.state.seconds += seconds
        self.state.history.append(summary)
        checkpointing.commit_round(self.run_dir, self.state)
        self._track(outcome, summary, local)
        self._log_progress(outcome, summary)
        self.bar.update(1)

    def _record_unreleased(self, outcome: RoundOutcome) -> None:
        """A round that released nothing still cost the sites that trained in it: keep it in
        the state (privacy.json names it) and say so in the log."""
        charged = sorted(s.site for s in outcome.sites if s.status == OK)
        self.state.unreleased = [u for u in self.state.unreleased if u["round"] != outcome.round]
        self.state.unreleased.append(
            {"round": outcome.round, "reason": outcome.reason, "charged": charged}
        )
        if charged:
            log.warning(
                "round %d released no generator (%s), but %s trained in it: their privacy "
                "budget was charged for it (the server received their replies) and their "
                "epsilon in privacy.json includes it",
                outcome.round, outcome.reason, ", ".join(charged),
            )  # fmt: skip

    def _track(self, outcome: RoundOutcome, summary: dict[str, Any], local: int) -> None:
        step = outcome.round * local
        if not self.tracker.enabled:
            self.tracker = Tracker(tensorboard_dir(self.run_dir), purge_step=self._purge)
        self.tracker.scalars({**training_scalars(summary),
                              **site_epsilons(site_rows(outcome, local))}, step)  # fmt: skip
        sample = RunDir(self.run_dir).sample_png(step)
        if sample.is_file():
            self.tracker.image("samples", sample, step)
        self.tracker.flush()

    def _log_progress(self, outcome: RoundOutcome, summary: dict[str, Any]) -> None:
        losses = " ".join(
            f"{k}={v:.3f}" for k, v in summary.items() if k.startswith("loss_") and v is not None
        )
        eps = summary.get("epsilon_max")
        log.info(
            "round %d/%d: %d/%d sites ok%s, epsilon max %s, %s, %.1f s",
            outcome.round, self.state.rounds, outcome.count(OK), len(outcome.sites),
            "" if outcome.aggregated else f" (NOT aggregated: {outcome.reason})",
            "n/a" if eps is None else f"{eps:.2f}", losses or "no losses", summary["seconds"],
        )  # fmt: skip

    def close(self) -> None:
        """End of the run: the progress bar and the TensorBoard writer."""
        self.bar.close()
        self.tracker.close()

    def finish(self) -> dict[str, Any] | None:
        """Write privacy.json from the latest per-site accountant reports; return it (None
        before any site reported)."""
        if not self.state.sites:
            return None
        return write_federated_privacy(
            self.run_dir, self.cfg, self.state.sites, pretrained_on=self.pretrained_on,
            unreleased=self.state.unreleased,
        )  # fmt: skip
