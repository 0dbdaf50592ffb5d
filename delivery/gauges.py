"""The delivery state gauges (backlog by priority and its age, dead letters, open circuits),
read from the database and the breakers on every sweep: they are facts about shared state, so
every worker reports the same values and dashboards take the max."""

from __future__ import annotations

import logging
import uuid

from redis.exceptions import RedisError
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.breaker import Breaker
from gateway.database import utcnow
from gateway.events.models import DEAD, OPEN_STATUSES, Delivery
from gateway.events.priority import PRIORITIES
from gateway.metrics import BACKLOG_READ, CIRCUIT_OPEN, OLDEST_PENDING, PENDING
from gateway.metrics import DEAD as DEAD_LETTERS

_log = logging.getLogger("hookgate.delivery")
_MAX_CIRCUITS = 10_000  # open circuits reported per sweep (the breakers list them; a gauge series each)


async def refresh(session: AsyncSession, breaker: Breaker) -> None:
    now = utcnow()
    waiting = {priority: (0, None) for priority in PRIORITIES}
    rows = await session.execute(
        select(Delivery.priority, func.count(), func.min(case((Delivery.next_attempt_at <= now, Delivery.next_attempt_at))))
        .where(Delivery.status.in_(OPEN_STATUSES))
        .group_by(Delivery.priority)
    )
    for priority, count, oldest in rows:
        waiting[priority] = (count, oldest)
    for priority, (count, oldest) in waiting.items():
        PENDING.labels(priority=priority).set(count)
        OLDEST_PENDING.labels(priority=priority).set((now - oldest).total_seconds() if oldest else 0.0)
    DEAD_LETTERS.set(await session.scalar(select(func.count()).where(Delivery.status == DEAD)) or 0)
    BACKLOG_READ.set_to_current_time()
    CIRCUIT_OPEN.clear()
    for tenant_id, endpoint_id in await _troubled_circuits(session, breaker):
        CIRCUIT_OPEN.labels(tenant=str(tenant_id), endpoint=str(endpoint_id)).set(1)


async def _troubled_circuits(session: AsyncSession, breaker: Breaker) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(tenant, endpoint) of the circuits not closed that deliveries wait behind (an open circuit
    nothing waits behind is no trouble yet). The breakers list their open circuits, so none is
    missed however many endpoints have waiting deliveries."""
    try:
        circuits = await breaker.open_circuits(_MAX_CIRCUITS)
    except (RedisError, OSError):
        _log.warning("breakers unreachable; circuit gauges not refreshed", exc_info=True)
        return []
    if not circuits:
        return []
    rows = await session.execute(
        select(Delivery.tenant_id, Delivery.endpoint_id)
        .where(Delivery.endpoint_id.in_([uuid.UUID(endpoint_id) for endpoint_id in circuits]), Delivery.status.in_(OPEN_STATUSES))
        .distinct()
    )
    return [(tenant_id, endpoint_id) for tenant_id, endpoint_id in rows]
