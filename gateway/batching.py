"""Adaptive batching: what concurrent callers submit leaves together when the downstream is busy.

A batch leaves at once while fewer than ``concurrency`` batches are in flight, so an idle system
adds no latency; items that arrive while every slot is busy wait and leave together in the next
batch (up to ``max_items``). Batches therefore grow with the load, which is when one round trip
or one commit for many items pays. Each caller gets its own item's result, or the batch's error.

A batch takes its items when its task first runs, not when it is made: whatever was submitted in
the meantime (the rest of that turn of the event loop, e.g. every attempt one claim started) leaves
with it. That costs no time, as the task would not have run sooner, and it saves the round trip
that the first caller of a burst otherwise made alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], *, max_items: int, concurrency: int) -> None:
        self._flush_batch = flush
        self._max_items = max_items
        self._slots = concurrency
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._unstarted: set[asyncio.Task[None]] = set()  # batches that have not taken their items yet

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        while len(self._pending) > len(self._unstarted) * self._max_items and len(self._in_flight) < self._slots:
            task = asyncio.create_task(self._run())
            self._in_flight.add(task)
            self._unstarted.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._unstarted.discard(task)  # cancelled before it ran: its items are still pending
        self._start()

    async def _run(self) -> None:
        self._unstarted.discard(asyncio.current_task())  # type: ignore[arg-type]
        batch, self._pending = self._pending[: self._max_items], self._pending[self._max_items :]
        if not batch:
            return
        try:
            results = await self._flush_batch([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its caller may be gone (cancelled); the work is done all the same
                future.set_result(result)
