"""Waiting for the sites' replies with a poll interval proportional to the wait.

Flower's grids wait for replies in ``send_and_receive`` by pulling, then sleeping a fixed
interval: 0.1 s in simulation (``InMemoryGrid``), 3 s in deployment (``HttpGrid`` to the
SuperLink). A round thus ends on average half an interval after its last site replied: up
to 1.5 s of a few-second round in deployment. ``ProportionalPollGrid`` wraps any grid and
sleeps ``fraction`` x the time waited so far between pulls (within ``[min_s, max_s]``), so
the delay after the last reply is at most ~``fraction`` of the round (or ``min_s``), while
the number of pulls grows only with the logarithm of the round's length (about 280 pulls
for a 3 s round, 580 for a minute, 1130 for ten: then one per ``max_s``).

In Flower's simulation engine, the engine and the server share one process, so they can do
better than polling: with ``EngineSignals`` (fedsynth.simulation wires them into the
engine), the grid rings ``pushed`` after pushing a round's messages and the engine rings
``replied`` after storing each reply; the grid waits on ``replied`` instead of sleeping, so
a round ends as soon as its last reply is stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class EngineSignals:
    """Wake-ups between the server's grid and an engine in the same process.

    ``pushed``: set by the grid after it pushed messages (the engine may deliver them now).
    ``replied``: set by the engine after it stored a reply (the grid may pull it now).
    """

    def __init__(self) -> None:
        self.pushed = threading.Event()
        self.replied = threading.Event()


class ProportionalPollGrid(Grid):
    """``grid`` with a ``send_and_receive`` that polls at intervals proportional to the wait.

    Every other method is the wrapped grid's. ``fraction``: sleep between pulls as a
    fraction of the time waited so far; ``min_s`` / ``max_s``: bounds of that sleep, seconds.
    ``signals``: an in-process engine's wake-ups; between pulls the grid then waits on
    ``signals.replied`` (at most the same pause) instead of sleeping. ``on_push``: called
    after messages were pushed (not for an empty push).
    """

    def __init__(
        self,
        grid: Grid,
        *,
        fraction: float = 0.01,
        min_s: float = 0.005,
        max_s: float = 1.0,
        signals: EngineSignals | None = None,
        on_push: Callable[[], None] | None = None,
    ):
        if not (0 < fraction < 1 and 0 < min_s <= max_s):
            raise ValueError(
                f"need 0 < fraction < 1 and 0 < min_s <= max_s, got {fraction}, {min_s}, {max_s}"
            )
        self.grid, self.fraction, self.min_s, self.max_s = grid, fraction, min_s, max_s
        self.signals, self.on_push = signals, on_push

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull replies until all arrived or ``timeout`` s passed."""
        pending = set(self.push_messages(messages))
        start = time.monotonic()
        end = None if timeout is None else start + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            now = time.monotonic()
            if not pending or (end is not None and now >= end):
                break
            pause = min(self.max_s, max(self.min_s, self.fraction * (now - start)))
            self._pause(pause if end is None else min(pause, end - now))
        return replies

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the engine signals a stored reply."""
        if self.signals is None:
            time.sleep(seconds)
            return
        # Cleared after the wait, before the next pull: a reply stored after that pull sets
        # it again, so the following wait returns at once and nothing is missed.
        self.signals.replied.wait(seconds)
        self.signals.replied.clear()

    # -- the wrapped grid's own behaviour ------------------------------------------------

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = list(self.grid.push_messages(messages))
        if self.signals is not None:
            self.signals.pushed.set()
        if ids and self.on_push is not None:
            self.on_push()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)
