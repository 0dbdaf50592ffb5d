"""The doorbell: after a commit, tell the delivery side that there is work. Only a hint.

Losing a ring delays work until the sweeper's next pass; it never loses it, because the
database row is the truth. Ringing therefore never raises into the caller.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from arq import create_pool
from arq.connections import RedisSettings

from gateway.batching import Batcher

if TYPE_CHECKING:
    from arq.connections import ArqRedis

_log = logging.getLogger("hookgate.doorbell")


@runtime_checkable
class Doorbell(Protocol):
    async def ring(self, event_ids: list[uuid.UUID]) -> None: ...


async def ring_safely(doorbell: Doorbell, event_ids: list[uuid.UUID]) -> None:
    try:
        await doorbell.ring(event_ids)
    except Exception:  # noqa: BLE001 - a lost ring only delays: the sweeper finds the rows
        _log.warning("doorbell failed; the sweeper will pick the work up", exc_info=True)


FAN_OUT_JOB = "fan_out"
_MAX_RINGS = 500


class ArqDoorbell:
    """Production: an arq job carrying only the event ids, picked up by any worker.

    Rings that come while one is being enqueued are coalesced into the next job (an arq enqueue
    is several Redis round trips), so a busy gateway sends one job for many events.
    """

    def __init__(self, redis_url: str) -> None:
        self._redis_settings = RedisSettings.from_dsn(redis_url)
        self._redis_settings.conn_timeout = 1
        self._redis_settings.conn_retries = 0
        self._pool: ArqRedis | None = None
        self._batcher: Batcher[list[uuid.UUID], None] = Batcher(self._enqueue, max_items=_MAX_RINGS, concurrency=1)

    async def ring(self, event_ids: list[uuid.UUID]) -> None:
        await self._batcher.submit(event_ids)

    async def _enqueue(self, rings: list[list[uuid.UUID]]) -> list[None]:
        if self._pool is None:
            self._pool = await create_pool(self._redis_settings)
        await self._pool.enqueue_job(FAN_OUT_JOB, [str(event_id) for ids in rings for event_id in ids])
        return [None] * len(rings)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
