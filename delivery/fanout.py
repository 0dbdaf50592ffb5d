"""Fan-out: one delivery row per (event, matching endpoint), created idempotently.

On the live path (every ring). On Postgres one statement takes the events (lock, mark, read),
matches them against their tenants' endpoints and inserts the deliveries. SQLite takes them in
one statement, reads the endpoints, and inserts through one statement compiled once, with the
rows as parameters. Other callers (operational events, replays) go through ``fan_out``.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Update,
    Uuid,
    and_,
    bindparam,
    case,
    column,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import UTCDateTime, among, dialect_insert, new_id, postgres_sql, utcnow
from gateway.events.models import PENDING, Delivery, Event
from gateway.events.priority import matches
from tenants.endpoints.models import Endpoint


def subscribed(event_types: Sequence[str], event_type: str, *, operational: bool) -> bool:
    """Whether an endpoint with these filters takes an event of this type.

    Hookgate's own (``operational``: events with no source, such as ``delivery.dead``) reach only
    endpoints that name them, exactly or by prefix, never ``*``: a Stripe consumer subscribed to
    everything should not start receiving gateway internals. What a tenant's sources send goes
    through ``*`` whatever its name (a shipping provider's ``delivery.completed`` included)."""
    return any(matches(p, event_type) for p in event_types if not (operational and p == "*"))


class FannedEvent(Protocol):
    """What fan-out reads of an event: an `Event`, or a row of its id, tenant_id, source_id, type and priority."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def source_id(self) -> uuid.UUID | None: ...
    @property
    def type(self) -> str: ...
    @property
    def priority(self) -> str: ...


_event, _endpoint, _delivery = Event.__table__, Endpoint.__table__, Delivery.__table__
STRANDED_BATCH = 500  # events per sweeper transaction
_NOW = bindparam("now", type_=UTCDateTime())


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
    return _original(new_id(), event.tenant_id, event.id, endpoint_id, event.priority, utcnow())


def _original(id: Any, tenant_id: Any, event_id: Any, endpoint_id: Any, priority: Any, now: Any) -> dict[str, Any]:
    """An original delivery's columns: Python values for ``delivery_row``, SQL expressions for the
    Postgres fan-out (``_fan_out_in_one``), so both make the same row."""
    return {
        "id": id,
        "tenant_id": tenant_id,
        "event_id": event_id,
        "endpoint_id": endpoint_id,
        "priority": priority,
        "is_replay": False,
        "status": PENDING,
        "attempt_count": 0,
        "retry_offset": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


_ORIGINAL = tuple(_original(*(None,) * 6))  # an original delivery's columns

Subscriber = Row[tuple[uuid.UUID, uuid.UUID, list[str]]]  # an endpoint's id, tenant_id, event_types
_SUBSCRIBING = and_(_endpoint.c.enabled.is_(True), _endpoint.c.deleted_at.is_(None))  # endpoints that get deliveries


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
    return update(_event).where(among(dialect, _event.c.id, "ids")).values(fanned_out_at=_NOW)


async def fan_out(session: AsyncSession, events: Sequence[FannedEvent], *, exclude: uuid.UUID | None = None) -> int:
    """Create the deliveries of ``events`` and mark them fanned out; returns how many were due."""
    if not events:
        return 0
    await session.execute(_mark(session.bind.dialect.name), {"ids": [e.id for e in events], "now": utcnow()})
    return await _create_deliveries(session, events, exclude)


# What a take reads of each event (``FannedEvent``), and the name its CTE has in the claim's text.
_TAKEN = table("taken", *(column(name, _event.c[name].type) for name in ("id", "tenant_id", "source_id", "type", "priority")))


def _take(held: Select[Any]) -> Update:
    """Lock, mark and read the ``held`` events that are not fanned out yet and that no other
    transaction holds."""
    return (
        update(_event)
        .where(_event.c.id.in_(held.where(_event.c.fanned_out_at.is_(None)).with_for_update(skip_locked=True)))
        .values(fanned_out_at=_NOW)
        .returning(*(_event.c[name] for name in _TAKEN.c.keys()))
    )


def _rung(dialect: str) -> Update:
    return _take(select(_event.c.id).where(among(dialect, _event.c.id, "ids")))


_TAKE_RUNG = _rung("sqlite")  # Postgres: _FAN_OUT_RUNG

# The sweeper's batch: the oldest events received before ``cutoff``.
_STRANDED = select(_event.c.id).where(_event.c.received_at <= bindparam("cutoff", type_=UTCDateTime()))
_TAKE_STRANDED = _take(_STRANDED.order_by(_event.c.received_at).limit(STRANDED_BATCH))
_ANY_STRANDED = _STRANDED.where(_event.c.fanned_out_at.is_(None)).limit(1)


async def fan_out_rung(session: AsyncSession, event_ids: Sequence[uuid.UUID]) -> None:
    """Fan out the rung events not fanned out yet; another worker may hold some: it fans them out.

    They are locked, marked and read in one statement (on Postgres the same statement makes their
    deliveries too).
    """
    await _fan_out_taken(session, _TAKE_RUNG, _FAN_OUT_RUNG, {"ids": list(event_ids)})


async def fan_out_stranded(session: AsyncSession, received_before: datetime) -> int:
    """The sweeper's batch: fan out up to ``STRANDED_BATCH`` events received before ``received_before``
    and not fanned out (their ring was lost); returns how many events it took.

    It looks before it takes: most sweeps find nothing, and an UPDATE takes SQLite's database
    write lock even when it matches no row (the embedded app sweeps every few seconds).
    """
    if await session.scalar(_ANY_STRANDED, {"cutoff": received_before}) is None:
        return 0
    return await _fan_out_taken(session, _TAKE_STRANDED, _FAN_OUT_STRANDED, {"cutoff": received_before})


def _fan_out_in_one(take: Update) -> Select[Any]:
    """Postgres: what ``take`` takes, matched against its tenants' enabled endpoints, with the
    deliveries inserted, in one statement that answers how many events it took. One statement is
    atomic on its own, so the dispatcher runs it without a transaction (no BEGIN, no COMMIT: two
    round trips fewer per pass). SQLite, which has no data-modifying CTE, runs ``take`` and matches
    in Python (``subscribed``); a test holds the two alike."""
    taken = take.cte("taken")
    made = _insert("postgresql").from_select(list(_ORIGINAL), _matching(taken)).cte("made")
    return select(func.count().label("events")).select_from(taken).add_cte(made)


def _matching(taken: Any) -> Select[Any]:
    """The original deliveries of the ``taken`` events, with new ids: one per enabled endpoint of
    their tenant whose filter takes the event's type."""
    endpoint = _endpoint.c
    row = _original(func.gen_random_uuid(), taken.c.tenant_id, taken.c.id, endpoint.id, taken.c.priority, _NOW)
    return (
        select(*(_sql(value, _delivery.c[name].type).label(name) for name, value in row.items()))
        .select_from(taken.join(_endpoint, endpoint.tenant_id == taken.c.tenant_id))
        .where(_SUBSCRIBING, _subscribes(endpoint.event_types, taken.c.type, taken.c.source_id))
    )


def _sql(value: Any, type_: Any) -> ColumnElement[Any]:
    return value if isinstance(value, ColumnElement) else literal(value, type_)


def _subscribes(event_types: Any, event_type: Any, source_id: Any) -> ColumnElement[bool]:
    """``subscribed`` in SQL: one of the endpoint's patterns matches, and ``*`` never takes an
    operational event (one with no source)."""
    pattern = func.json_array_elements_text(event_types).table_valued("value").render_derived(name="p").c.value
    operational = source_id.is_(None)
    prefix = and_(func.right(pattern, 1) == "*", func.starts_with(event_type, func.left(pattern, -1)))
    return exists().where(not_(and_(pattern == "*", operational)), or_(pattern == event_type, prefix))


_FAN_OUT_RUNG = _fan_out_in_one(_rung("postgresql"))
_FAN_OUT_STRANDED = _fan_out_in_one(_TAKE_STRANDED)

# The rung fan-out as CTEs of a Postgres statement written as text: the dispatcher's claim
# (delivery/engine.py), which then fans out and claims in one round trip. ``taken``: the rung
# events (``ids``) locked, marked and read; ``matched``: their deliveries, not inserted yet, so
# that the claim can rank them with the rows already due.
RUNG_FAN_OUT_CTES = f"""taken AS ({postgres_sql(_rung("postgresql"))}),
matched AS MATERIALIZED ({postgres_sql(_matching(_TAKEN))})"""


def made_cte_sql(returning: Sequence[str]) -> str:
    """The body of the CTE that inserts ``matched``, the rows the claim's ``chosen`` CTE took
    already leased until ``:lease``; it returns ``returning`` and ``locked_until``."""
    matched = table("matched", *(column(name, _delivery.c[name].type) for name in _ORIGINAL))
    chosen = table("chosen", column("id", Uuid()))
    leased = case((chosen.c.id.is_not(None), bindparam("lease", type_=UTCDateTime())))
    made = _insert("postgresql").from_select(
        [*_ORIGINAL, "locked_until"], select(*matched.c, leased).select_from(matched.outerjoin(chosen, chosen.c.id == matched.c.id))
    )
    return postgres_sql(made.returning(*(_delivery.c[name] for name in (*returning, "locked_until"))))


async def _fan_out_taken(session: AsyncSession, take: Update, in_one: Select[Any], params: dict[str, Any]) -> int:
    """Fan out what ``take`` takes (SQLite), or ``in_one`` does the same in one statement (Postgres)."""
    params = {**params, "now": utcnow()}
    if session.bind.dialect.name == "postgresql":
        return int((await session.execute(in_one, params)).scalar_one())
    events = (await session.execute(take, params)).all()
    await _create_deliveries(session, events, None)
    return len(events)


async def _create_deliveries(session: AsyncSession, events: Sequence[FannedEvent], exclude: uuid.UUID | None) -> int:
    endpoints = await endpoints_for(session, (e.tenant_id for e in events))
    rows = [
        delivery_row(event, endpoint.id)
        for event in events
        for endpoint in endpoints.get(event.tenant_id, ())
        if endpoint.id != exclude and subscribed(endpoint.event_types, event.type, operational=event.source_id is None)
    ]
    await insert_deliveries(session, rows)
    return len(rows)
