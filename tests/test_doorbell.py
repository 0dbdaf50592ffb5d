"""The production doorbell on real Redis: a Redis list the gateway pushes rings onto and every
worker blocks on. Rings are hints (the sweeper finds what a lost ring would have announced), but
a ring that arrives must reach exactly one worker, at once, with every id it carried."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.doorbell import MAX_WAITING_RINGS, RINGS_KEY, RedisDoorbell, listen, ring_safely
from tests.support.receiver import wait_until
from tests.support.services import ThrowawayRedis


class _Worker:
    """A listener whose dispatcher only records the rings it was handed."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.rings: list[list[uuid.UUID]] = []
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(listen(redis, self._ring, self.stop))

    async def _ring(self, event_ids: list[uuid.UUID]) -> None:
        self.rings.append(event_ids)

    @property
    def ids(self) -> list[uuid.UUID]:
        return [event_id for ring in self.rings for event_id in ring]

    async def stopped(self) -> None:
        """Told to stop, the listener ends by itself, within its blocking pop's timeout."""
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def _workers(redis: aioredis.Redis, count: int) -> AsyncIterator[list[_Worker]]:
    workers = [_Worker(redis) for _ in range(count)]
    try:
        yield workers
    finally:
        for worker in workers:
            await worker.stopped()


async def test_a_ring_reaches_a_listening_worker_with_every_id(redis_client: aioredis.Redis) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    async with _workers(redis_client, 1) as [worker]:
        await RedisDoorbell(redis_client).ring(ids)
        await wait_until(lambda: worker.ids, timeout=5, what="the ring")

    assert worker.ids == ids
    assert await redis_client.llen(RINGS_KEY) == 0


async def test_rings_waiting_for_a_worker_are_kept_and_delivered_when_it_starts(redis_client: aioredis.Redis) -> None:
    doorbell = RedisDoorbell(redis_client)
    rings = [[uuid.uuid4()] for _ in range(20)]
    await asyncio.gather(*(doorbell.ring(ring) for ring in rings))  # concurrent rings are coalesced
    assert 1 <= await redis_client.llen(RINGS_KEY) < len(rings)

    async with _workers(redis_client, 1) as [worker]:
        await wait_until(lambda: len(worker.ids) == len(rings), timeout=5, what="the waiting rings")

    assert sorted(worker.ids) == sorted(ring[0] for ring in rings)


async def test_each_ring_goes_to_exactly_one_of_several_workers(redis_client: aioredis.Redis) -> None:
    doorbell = RedisDoorbell(redis_client)
    ids = [uuid.uuid4() for _ in range(300)]
    async with _workers(redis_client, 3) as workers:
        for start in range(0, len(ids), 3):
            await doorbell.ring(ids[start : start + 3])
        await wait_until(lambda: sum(len(w.ids) for w in workers) >= len(ids), timeout=10, what="every ring")
        await asyncio.sleep(0.2)  # a ring handed out twice would show up by now

    handed_out = [event_id for worker in workers for event_id in worker.ids]
    assert sorted(handed_out) == sorted(ids)


async def test_with_no_worker_the_list_keeps_only_the_newest_rings(redis_client: aioredis.Redis) -> None:
    doorbell = RedisDoorbell(redis_client)
    newest = uuid.uuid4()
    for _ in range(MAX_WAITING_RINGS + 5):
        await doorbell.ring([uuid.uuid4()])
    await doorbell.ring([newest])

    assert await redis_client.llen(RINGS_KEY) == MAX_WAITING_RINGS
    assert await redis_client.lindex(RINGS_KEY, -1) == newest.bytes


async def test_a_listener_outlives_a_redis_restart_and_ringing_never_raises(throwaway_redis: ThrowawayRedis) -> None:
    redis = aioredis.from_url(throwaway_redis.url, socket_connect_timeout=1, socket_timeout=2)
    doorbell = RedisDoorbell(redis)
    before, during, after = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        async with _workers(redis, 1) as [worker]:
            await doorbell.ring([before])
            await wait_until(lambda: worker.ids == [before], timeout=5, what="the first ring")
            await asyncio.to_thread(throwaway_redis.stop)
            await ring_safely(doorbell, [during])  # lost, logged; the sweeper would find its event
            await asyncio.sleep(0.5)
            await asyncio.to_thread(throwaway_redis.start)
            for _ in range(40):  # the first command on a dead pooled connection may fail: ring again
                await ring_safely(doorbell, [after])
                if after in worker.ids:
                    break
                await asyncio.sleep(0.25)
    finally:
        await redis.aclose()

    assert worker.ids[0] == before and set(worker.ids[1:]) == {after}


@pytest.mark.parametrize("count", [1, 500])
async def test_a_ring_round_trips_its_ids_exactly(redis_client: aioredis.Redis, count: int) -> None:
    ids = [uuid.uuid4() for _ in range(count)]
    await RedisDoorbell(redis_client).ring(ids)
    async with _workers(redis_client, 1) as [worker]:
        await wait_until(lambda: len(worker.ids) == count, timeout=5, what="the ring")

    assert worker.ids == ids and len(worker.rings) == 1


async def test_an_entry_that_is_not_event_ids_is_skipped_and_the_listener_goes_on(redis_client: aioredis.Redis) -> None:
    good = uuid.uuid4()
    await redis_client.rpush(RINGS_KEY, b"not ids")
    async with _workers(redis_client, 1) as [worker]:
        await RedisDoorbell(redis_client).ring([good])
        await wait_until(lambda: worker.ids, timeout=5, what="the ring after the bad entry")

    assert worker.ids == [good]


async def test_a_listener_told_to_stop_ends_even_while_redis_is_gone(throwaway_redis: ThrowawayRedis) -> None:
    redis = aioredis.from_url(throwaway_redis.url, socket_connect_timeout=1, socket_timeout=2)
    try:
        async with _workers(redis, 1) as [worker]:
            await asyncio.to_thread(throwaway_redis.stop)
            await asyncio.sleep(0.5)  # now in its retry wait
            assert not worker.task.done()
        assert worker.task.done() and worker.task.exception() is None  # ended by itself, not cancelled
    finally:
        await redis.aclose()


async def test_rings_waiting_together_reach_the_worker_in_one_pop(private_redis_client: aioredis.Redis) -> None:
    """One blocking pop takes the first ring and those behind it: one round trip, one pass."""
    batches = [[uuid.uuid4(), uuid.uuid4()] for _ in range(40)]
    for ids in batches:  # separate list entries, as separate gateway processes push them
        await private_redis_client.rpush(RINGS_KEY, b"".join(event_id.bytes for event_id in ids))
    before = await _pops(private_redis_client)
    async with _workers(private_redis_client, 1) as [worker]:
        await wait_until(lambda: worker.rings, timeout=5, what="the waiting rings")
    assert worker.rings == [[event_id for ids in batches for event_id in ids]]
    after = await _pops(private_redis_client)
    assert after["cmdstat_blmpop"] > before["cmdstat_blmpop"] and after["cmdstat_lpop"] == before["cmdstat_lpop"]


async def _pops(redis_client: aioredis.Redis) -> dict[str, int]:
    stats = await redis_client.info("commandstats")
    return {name: int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_lpop", "cmdstat_blmpop")}
