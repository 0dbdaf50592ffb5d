"""The doorbell: after a commit, tell the delivery side that there is work. Only a hint.

Losing a ring delays work until the sweeper's next pass; it never loses it, because the
database row is the truth. Ringing therefore never raises into the caller.

In production a ring is the new events' ids pushed onto a Redis list (`RINGS_KEY`) that every
worker blocks on (`listen`); Redis hands each entry to exactly one of them. Not an arq job:
arq starts jobs one at a time with several Redis round trips each, ~100 per second per worker
under load, so the ring, not the delivery, bounded the live path (docs/PERFORMANCE.md). arq
keeps the jobs that are jobs (the retraining cron).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.batching import Batcher

_log = logging.getLogger("hookgate.doorbell")

RINGS_KEY = "hookgate:rings"
# Rings kept while no worker listens; older ones are dropped, and the sweeper finds their events.
MAX_WAITING_RINGS = 10_000
_MAX_RINGS = 500  # rings per push, and per pop
_LISTEN_SECONDS = 1  # a blocking pop returns empty-handed after this, so a stop is noticed
_RETRY_SECONDS = 2.0


@runtime_checkable
class Doorbell(Protocol):
    async def ring(self, event_ids: list[uuid.UUID]) -> None: ...


async def ring_safely(doorbell: Doorbell, event_ids: list[uuid.UUID]) -> None:
    try:
        await doorbell.ring(event_ids)
    except Exception:  # noqa: BLE001 - a lost ring only delays: the sweeper finds the rows
        _log.warning("doorbell failed; the sweeper will pick the work up", exc_info=True)


class RedisDoorbell:
    """Production: one list entry per coalesced batch of rings, pushed in one round trip.

    Rings that come while one push is in flight leave together in the next.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._batcher: Batcher[list[uuid.UUID], None] = Batcher(self._push, max_items=_MAX_RINGS, concurrency=1)

    async def ring(self, event_ids: list[uuid.UUID]) -> None:
        await self._batcher.submit(event_ids)

    async def _push(self, rings: list[list[uuid.UUID]]) -> list[None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.rpush(RINGS_KEY, b"".join(event_id.bytes for ids in rings for event_id in ids))
            pipe.ltrim(RINGS_KEY, -MAX_WAITING_RINGS, -1)
            await pipe.execute()
        return [None] * len(rings)


async def listen(redis: aioredis.Redis, ring: Callable[[list[uuid.UUID]], Awaitable[None]], stop: asyncio.Event) -> None:
    """Hand every ring this worker pops to ``ring``, at once, until ``stop`` is set.

    It ends within a blocking pop's timeout of ``stop``, without relying on cancellation: a cancel
    that lands as the Redis client's socket timeout fires comes back as a Redis timeout, which the
    retry below would otherwise swallow, and the worker would never finish stopping. While Redis is
    unreachable it retries every few seconds; the dispatcher polls the database meanwhile.
    """
    while not stop.is_set():
        try:
            # One round trip: block for the first ring and take those waiting behind it (Redis 7).
            popped = await redis.blmpop(_LISTEN_SECONDS, 1, RINGS_KEY, direction="LEFT", count=_MAX_RINGS)
            if popped is None:
                continue
            entries = popped[1]
        except (RedisError, OSError):
            _log.warning("doorbell unreachable; retrying (the database is polled meanwhile)", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RETRY_SECONDS)
            continue
        await ring(_event_ids(entries))


def _event_ids(entries: list[bytes]) -> list[uuid.UUID]:
    """The ids packed in list entries (16 bytes each); an entry that is not such a list is skipped,
    not fatal: the listener must outlive whatever else writes to the key."""
    ids = []
    for entry in entries:
        if not entry or len(entry) % 16:
            _log.warning("doorbell entry of %d bytes is not a list of event ids; skipped", len(entry))
            continue
        ids += [uuid.UUID(bytes=entry[i : i + 16]) for i in range(0, len(entry), 16)]
    return ids
