"""The adaptive batcher under every group commit and pipeline (``gateway.batching``), driven by
a flush that holds each batch until the test lets it go."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.batching import Batcher


class _Held:
    """A flush that records each batch and returns only when released; it answers each item doubled."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        return [item * 2 for item in items]


async def _until(condition: Callable[[], object], turns: int = 50) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the batcher did not get there")


async def test_a_burst_leaves_as_one_batch_and_what_waits_for_the_slot_leaves_together() -> None:
    flush = _Held()
    batcher: Batcher[int, int] = Batcher(flush, max_items=3, concurrency=1)
    burst = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]  # one turn: 3 + what max_items leaves
    await _until(lambda: flush.batches)
    assert flush.batches == [[0, 1, 2]]  # the first caller did not leave alone
    late = [asyncio.ensure_future(batcher.submit(i)) for i in (10, 11)]  # while the only slot is busy
    await asyncio.sleep(0)
    assert flush.batches == [[0, 1, 2]]
    flush.release.set()
    assert await asyncio.gather(*burst, *late) == [0, 2, 4, 6, 20, 22]
    assert flush.batches == [[0, 1, 2], [3, 10, 11]]


async def test_two_slots_take_a_burst_in_max_sized_batches() -> None:
    flush = _Held()
    batcher: Batcher[int, int] = Batcher(flush, max_items=2, concurrency=2)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
    await _until(lambda: len(flush.batches) == 2)
    assert flush.batches == [[0, 1], [2, 3]]
    flush.release.set()
    assert await asyncio.gather(*calls) == [0, 2, 4, 6, 8]
    assert flush.batches == [[0, 1], [2, 3], [4]]


async def test_a_batch_cancelled_before_it_ran_leaves_its_items_to_the_next() -> None:
    flush = _Held()
    flush.release.set()
    batcher: Batcher[int, int] = Batcher(flush, max_items=8, concurrency=1)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)  # submitted: its batch is made but has not run
    [unstarted] = batcher._in_flight  # noqa: SLF001 - the batch task itself is what a shutdown cancels
    unstarted.cancel()
    await asyncio.sleep(0)
    assert await batcher.submit(2) == 4 and await first == 2
    assert flush.batches == [[1, 2]]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("down")
        return items

    batcher: Batcher[int, int] = Batcher(flaky, max_items=8, concurrency=1)
    failed = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert [type(result) for result in failed] == [RuntimeError] * 3
    assert await batcher.submit(7) == 7
