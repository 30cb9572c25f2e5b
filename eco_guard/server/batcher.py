"""Micro-batching: gather concurrent requests into one batched call.

On a CPU (and even more on a GPU) one generate over 8 rows costs far less than 8 generates
over one row, so requests that arrive within a short window are run together. The batched
function runs in a worker thread, one batch at a time, so the event loop keeps accepting
requests while the model works; those requests form the next batch.

Failure isolation: if a batched call raises, every row is retried on its own, so one bad
row fails only its own request, never its companions'.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("eco_guard.server")


class BatcherClosed(RuntimeError):
    """The batcher is draining for shutdown and takes no new work."""


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[R] = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """Run ``fn(items) -> results`` (same length and order) over micro-batches.

    ``key`` splits items that cannot share a call (different decoding options): a batch
    only ever holds items of one key, and other keys wait for the next round.
    ``on_batch(n)`` is told each batch's size (for metrics).

    ``incoming()`` may say how many items are already accepted upstream and on their way
    here (requests still being classified). When the window closes with such items
    pending, the batch waits for them too, up to ``max_wait_s`` in all: they arrived
    within the window, they are just not through the classifier yet, and a batch that
    leaves without them makes them wait a whole generation instead of a few milliseconds.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        window_s: float,
        max_size: int,
        key: Callable[[T], Hashable] = lambda _: None,
        on_batch: Callable[[int], None] | None = None,
        incoming: Callable[[], int] | None = None,
        max_wait_s: float = 0.25,
        name: str = "batcher",
    ) -> None:
        self._fn = fn
        self._window_s = window_s
        self._max_size = max_size
        self._key = key
        self._on_batch = on_batch
        self._incoming = incoming
        self._max_wait_s = max_wait_s
        self.name = name
        self._queue: asyncio.Queue[_Job[T, R] | None] = asyncio.Queue()
        self._pending: deque[_Job[T, R]] = deque()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(), name=self.name)

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (or its own exception)."""
        if self._closed:
            raise BatcherClosed(f"{self.name} is shutting down")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(item, future))
        return await future

    async def close(self) -> None:
        """Stop taking work, finish everything already queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    # ------------------------------------------------------------------ worker

    async def _work(self) -> None:
        stopping = False
        while True:
            if not self._pending:
                if stopping:
                    return
                job = await self._queue.get()
                if job is None:
                    stopping = True
                    continue
                self._pending.append(job)
            stopping = await self._gather(stopping) or stopping
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    async def _gather(self, stopping: bool) -> bool:
        """Wait up to the window for companions of the oldest pending item; True on the stop sentinel."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        deadline = opened + self._window_s
        first_key = self._key(self._pending[0].item)
        while not stopping:
            same = sum(1 for j in self._pending if self._key(j.item) == first_key)
            if same >= self._max_size:
                break
            now = loop.time()
            if now >= deadline and self._incoming is not None and self._incoming() > 0:
                deadline = min(now + self._window_s, opened + self._max_wait_s)
            remaining = deadline - now
            try:
                job = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if job is None:
                return True
            self._pending.append(job)
        return stopping

    def _take_batch(self) -> list[_Job[T, R]]:
        """Up to ``max_size`` live jobs sharing the oldest job's key; cancelled ones are dropped."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()  # its caller timed out or went away before we started
        if not self._pending:
            return []
        first_key = self._key(self._pending[0].item)
        batch: list[_Job[T, R]] = []
        rest: deque[_Job[T, R]] = deque()
        for job in self._pending:
            if job.future.done():
                continue
            if len(batch) < self._max_size and self._key(job.item) == first_key:
                batch.append(job)
            else:
                rest.append(job)
        self._pending = rest
        return batch

    async def _run(self, batch: list[_Job[T, R]]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        outcomes = await asyncio.to_thread(self._call, [j.item for j in batch])
        for job, (ok, value) in zip(batch, outcomes):
            if job.future.done():
                continue
            if ok:
                job.future.set_result(value)  # type: ignore[arg-type]
            else:
                job.future.set_exception(value)  # type: ignore[arg-type]

    def _call(self, items: list[T]) -> list[tuple[bool, R | BaseException]]:
        """Run the batch; on failure, run each row alone so only the bad row fails."""
        try:
            results = list(self._fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
            return [(True, r) for r in results]
        except Exception as exc:  # noqa: BLE001 - isolate below
            if len(items) == 1:
                return [(False, exc)]
            log.warning("%s: batch of %d failed (%s: %s); retrying rows one by one", self.name, len(items), type(exc).__name__, exc)
        outcomes: list[tuple[bool, R | BaseException]] = []
        for item in items:
            try:
                outcomes.append((True, self._fn([item])[0]))
            except Exception as exc:  # noqa: BLE001 - this row's own failure
                outcomes.append((False, exc))
        return outcomes
