"""Overlapping the stages of synthesis: label cases ahead, NIfTI writing behind the generator.

Building a label case (deformed atlas anatomy, tumour, edits: numpy and scipy.ndimage) and
writing a case (gzip, fsync) release the GIL for most of their time, so a thread for each
runs beside the generator's forward passes instead of after them. Order and results are
unchanged: one thread draws the label cases in sequence (the edits' random stream is the
same), one thread writes the cases in sequence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_END = object()


class Prefetch(Generic[T]):
    """Iterate ``items`` in a background thread, ``depth`` items ahead of the consumer,
    starting at construction (the first items are built while the caller does other work).

    Errors of the producer are raised by ``next``, at the item where they happened. Use as
    a context manager (or call ``close``): the thread is stopped when the block is left.
    """

    def __init__(self, items: Iterable[T], depth: int = 1):
        self._it = iter(items)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsynth-prefetch")
        self._ahead = deque(self._pool.submit(next, self._it, _END) for _ in range(depth + 1))

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if not self._ahead:
            raise StopIteration
        item = self._ahead.popleft().result()
        if item is _END:
            self._ahead.clear()
            raise StopIteration
        self._ahead.append(self._pool.submit(next, self._it, _END))
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._ahead.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``Prefetch`` as a generator: the thread stops when the iteration ends or is closed."""
    with Prefetch(items, depth) as ahead:
        yield from ahead


class BackgroundWriter:
    """Runs write jobs in order in one thread; at most ``max_pending`` queued (memory bound).

    Use as a context manager: leaving the block waits for every job and raises the first
    error (a job's error also surfaces at the next ``submit``).
    """

    def __init__(self, max_pending: int = 2):
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsynth-writer")
        self._pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
