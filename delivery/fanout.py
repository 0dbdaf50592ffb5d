"""Fan-out: one delivery row per (event, matching endpoint), created idempotently.

On the live path (every ring), so it reads only the columns it needs and inserts through one
statement compiled once per dialect, with the rows as parameters.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import Row, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import dialect_insert, new_id, utcnow
from gateway.events.models import Delivery, Event
from gateway.events.priority import matches
from tenants.endpoints.models import Endpoint

# Hookgate's own events reach only endpoints that name them (exactly or by prefix), never "*":
# a Stripe consumer subscribed to everything should not start receiving gateway internals.
OPERATIONAL_PREFIXES = ("delivery.", "endpoint.", "anomaly.", "hookgate.")


def subscribed(event_types: Sequence[str], event_type: str) -> bool:
    operational = event_type.startswith(OPERATIONAL_PREFIXES)
    return any(matches(p, event_type) for p in event_types if not (operational and p == "*"))


class FannedEvent(Protocol):
    """What fan-out reads of an event: an `Event`, or a row of the columns `FAN_OUT_COLUMNS`."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def type(self) -> str: ...
    @property
    def priority(self) -> str: ...


FAN_OUT_COLUMNS = (Event.id, Event.tenant_id, Event.type, Event.priority)


@functools.cache
def _insert(dialect: str) -> Any:
    """The original-delivery insert, built once per dialect (the rows are its parameters)."""
    return dialect_insert(dialect)(Delivery).on_conflict_do_nothing(
        index_elements=["event_id", "endpoint_id"], index_where=text("NOT is_replay")
    )


async def insert_deliveries(session: AsyncSession, rows: list[dict[str, object]]) -> None:
    """Insert original deliveries; one that already exists for (event, endpoint) is skipped."""
    if rows:
        await session.execute(_insert(session.bind.dialect.name), rows)


def delivery_row(event: FannedEvent, endpoint_id: uuid.UUID) -> dict[str, object]:
    now = utcnow()
    return {
        "id": new_id(),
        "tenant_id": event.tenant_id,
        "event_id": event.id,
        "endpoint_id": endpoint_id,
        "priority": event.priority,
        "is_replay": False,
        "status": "pending",
        "attempt_count": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


Subscriber = Row[tuple[uuid.UUID, uuid.UUID, list[str]]]  # an endpoint's id, tenant_id, event_types


async def endpoints_for(session: AsyncSession, tenant_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[Subscriber]]:
    """The enabled endpoints of these tenants, by tenant."""
    rows = await session.execute(
        select(Endpoint.id, Endpoint.tenant_id, Endpoint.event_types).where(
            Endpoint.tenant_id.in_(set(tenant_ids)), Endpoint.enabled.is_(True), Endpoint.deleted_at.is_(None)
        )
    )
    by_tenant: dict[uuid.UUID, list[Subscriber]] = defaultdict(list)
    for endpoint in rows:
        by_tenant[endpoint.tenant_id].append(endpoint)
    return by_tenant


async def fan_out(session: AsyncSession, events: Sequence[FannedEvent], *, exclude: uuid.UUID | None = None) -> int:
    """Create the deliveries of ``events`` and mark them fanned out; returns how many were due."""
    if not events:
        return 0
    endpoints = await endpoints_for(session, (e.tenant_id for e in events))
    rows = [
        delivery_row(event, endpoint.id)
        for event in events
        for endpoint in endpoints.get(event.tenant_id, ())
        if endpoint.id != exclude and subscribed(endpoint.event_types, event.type)
    ]
    await insert_deliveries(session, rows)
    await session.execute(
        update(Event).where(Event.id.in_([e.id for e in events])).values(fanned_out_at=utcnow())
    )
    return len(rows)
