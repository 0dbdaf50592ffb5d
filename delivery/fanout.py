"""Fan-out: one delivery row per (event, matching endpoint), created idempotently.

On the live path (every ring), so it reads only the columns it needs, takes the events it fans
out in one statement (lock, mark, read; on Postgres with their tenants' endpoints too), and
inserts through one statement compiled once per dialect, with the rows as parameters.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Row, Select, Update, and_, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import UTCDateTime, among, dialect_insert, new_id, utcnow
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
    """What fan-out reads of an event: an `Event`, or a row of its id, tenant_id, type and priority."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def type(self) -> str: ...
    @property
    def priority(self) -> str: ...


_event, _endpoint = Event.__table__, Endpoint.__table__
STRANDED_BATCH = 500  # events per sweeper transaction


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


_SUBSCRIBING = and_(_endpoint.c.enabled.is_(True), _endpoint.c.deleted_at.is_(None))


@functools.cache
def _endpoints(dialect: str) -> Any:
    return select(_endpoint.c.id, _endpoint.c.tenant_id, _endpoint.c.event_types).where(
        among(dialect, _endpoint.c.tenant_id, "tenant_ids"), _SUBSCRIBING
    )


async def endpoints_for(session: AsyncSession, tenant_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[Subscriber]]:
    """The enabled endpoints of these tenants, by tenant."""
    rows = await session.execute(_endpoints(session.bind.dialect.name), {"tenant_ids": list(set(tenant_ids))})
    by_tenant: dict[uuid.UUID, list[Subscriber]] = defaultdict(list)
    for endpoint in rows:
        by_tenant[endpoint.tenant_id].append(endpoint)
    return by_tenant


@functools.cache
def _mark(dialect: str) -> Any:
    return update(_event).where(among(dialect, _event.c.id, "ids")).values(fanned_out_at=bindparam("now", type_=UTCDateTime()))


async def fan_out(session: AsyncSession, events: Sequence[FannedEvent], *, exclude: uuid.UUID | None = None) -> int:
    """Create the deliveries of ``events`` and mark them fanned out; returns how many were due."""
    if not events:
        return 0
    await session.execute(_mark(session.bind.dialect.name), {"ids": [e.id for e in events], "now": utcnow()})
    return await _create_deliveries(session, events, exclude)


def _take(held: Select[Any]) -> Update:
    """Lock, mark and read the ``held`` events that are not fanned out yet and that no other
    transaction holds."""
    return (
        update(_event)
        .where(_event.c.id.in_(held.where(_event.c.fanned_out_at.is_(None)).with_for_update(skip_locked=True)))
        .values(fanned_out_at=bindparam("now", type_=UTCDateTime()))
        .returning(_event.c.id, _event.c.tenant_id, _event.c.type, _event.c.priority)
    )


@functools.cache
def _take_rung(dialect: str) -> Any:
    return _take(select(_event.c.id).where(among(dialect, _event.c.id, "ids")))


# The sweeper's batch: the oldest events received before ``cutoff``.
_STRANDED = select(_event.c.id).where(_event.c.received_at <= bindparam("cutoff", type_=UTCDateTime()))
_TAKE_STRANDED = _take(_STRANDED.order_by(_event.c.received_at).limit(STRANDED_BATCH))
_ANY_STRANDED = _STRANDED.where(_event.c.fanned_out_at.is_(None)).limit(1)


async def fan_out_rung(session: AsyncSession, event_ids: Sequence[uuid.UUID]) -> None:
    """Fan out the rung events not fanned out yet; another worker may hold some: it fans them out.

    They are locked, marked and read in one statement, a round trip fewer than reading and then
    marking them.
    """
    await _fan_out_taken(session, _take_rung(session.bind.dialect.name), {"ids": list(event_ids)})


async def fan_out_stranded(session: AsyncSession, received_before: datetime) -> int:
    """The sweeper's batch: fan out up to ``STRANDED_BATCH`` events received before ``received_before``
    and not fanned out (their ring was lost); returns how many events it took.

    It looks before it takes: most sweeps find nothing, and an UPDATE takes SQLite's database
    write lock even when it matches no row (the embedded app sweeps every few seconds).
    """
    if await session.scalar(_ANY_STRANDED, {"cutoff": received_before}) is None:
        return 0
    return await _fan_out_taken(session, _TAKE_STRANDED, {"cutoff": received_before})


@functools.cache
def _with_subscribers(take: Update) -> Select[Any]:
    """Postgres: the taken events, each joined with its tenant's enabled endpoints (an event with none
    comes once, without one), so that the endpoints cost no round trip of their own."""
    taken = take.cte("taken")
    return select(*taken.c, _endpoint.c.id.label("endpoint_id"), _endpoint.c.event_types).select_from(
        taken.outerjoin(_endpoint, and_(_endpoint.c.tenant_id == taken.c.tenant_id, _SUBSCRIBING))
    )


async def _fan_out_taken(session: AsyncSession, take: Update, params: dict[str, Any]) -> int:
    params = {**params, "now": utcnow()}
    if session.bind.dialect.name != "postgresql":  # SQLite: no data-modifying CTE
        events = (await session.execute(take, params)).all()
        await _create_deliveries(session, events, None)
        return len(events)
    rows = (await session.execute(_with_subscribers(take), params)).all()
    pairs = [(row, row.endpoint_id, row.event_types) for row in rows if row.endpoint_id is not None]
    await insert_deliveries(session, _delivery_rows(pairs, None))
    return len({row.id for row in rows})


async def _create_deliveries(session: AsyncSession, events: Sequence[FannedEvent], exclude: uuid.UUID | None) -> int:
    endpoints = await endpoints_for(session, (e.tenant_id for e in events))
    pairs = [(event, endpoint.id, endpoint.event_types) for event in events for endpoint in endpoints.get(event.tenant_id, ())]
    rows = _delivery_rows(pairs, exclude)
    await insert_deliveries(session, rows)
    return len(rows)


def _delivery_rows(pairs: Iterable[tuple[FannedEvent, uuid.UUID, Sequence[str]]], exclude: uuid.UUID | None) -> list[dict[str, object]]:
    """A delivery per (event, endpoint id, the endpoint's event types) that subscribes to the event."""
    return [delivery_row(event, endpoint_id) for event, endpoint_id, types in pairs if endpoint_id != exclude and subscribed(types, event.type)]
