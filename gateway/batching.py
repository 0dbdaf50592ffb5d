"""Adaptive batching: what concurrent callers submit leaves together when the downstream is busy.

A batch leaves at once while fewer than ``concurrency`` batches are in flight, so an idle system
adds no latency; items that arrive while every slot is busy wait and leave together in the next
batch (up to ``max_items``). Batches therefore grow with the load, which is when one round trip
or one commit for many items pays. Each caller gets its own item's result, or the batch's error.
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

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._pending and len(self._in_flight) < self._slots:
            batch, self._pending = self._pending[: self._max_items], self._pending[self._max_items :]
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._start()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
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
