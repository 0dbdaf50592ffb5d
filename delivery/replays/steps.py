"""One batch of each kind of replay job, written in the transaction that also advances its cursor.

Replays and redrives queue at most ``limit`` deliveries per batch, at low priority (so they count
against the tenant's delivery share behind its live traffic), and only while the job has fewer
than ``replay_max_in_flight`` undelivered: the runner's pacing. A batch raises ``JobFailed``
before it writes anything, never after.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from delivery.fanout import delivery_row, fan_out, subscribed
from delivery.replays.event_replay import join_waiting
from delivery.replays.models import COMPLETED, ReplayJob
from gateway.database import utcnow
from gateway.events.facts import stripe_facts
from gateway.events.models import DEAD, OPEN_STATUSES, PENDING, SUCCEEDED, Delivery, Event
from gateway.events.priority import classify, matching
from gateway.events.repository import unleased
from gateway.events.store import event_row, insert_once
from gateway.ingest import providers
from gateway.repository import within
from tenants.endpoints.models import Endpoint
from tenants.sources.models import Source

REPLAY_PRIORITY = "low"
_json = msgspec.json.Encoder()


class JobFailed(Exception):
    """The job cannot go on (its endpoint or source is gone, Stripe refused the key): it fails."""


def replay_events(job: ReplayJob) -> Select[Any]:
    """The events a bulk replay covers, oldest first: its received-at window and filters. Only
    events that came from a source: Hookgate's own (``delivery.dead``…) are not replayed in bulk."""
    query = (
        select(Event.id, Event.tenant_id, Event.type, Event.priority, Event.received_at)
        .where(
            Event.tenant_id == job.tenant_id,
            Event.source_id.is_not(None),
            Event.received_at >= job.since,
            Event.received_at < job.until,
        )
        .order_by(Event.received_at, Event.id)
    )
    if job.types:
        query = query.where(matching(Event.type, job.types))
    if job.source_id is not None:
        query = query.where(Event.source_id == job.source_id)
    return query


def dead_letters(job: ReplayJob) -> Select[Any]:
    """Exactly the dead deliveries a redrive was asked for: dead when it was created, in its filters."""
    query = (
        select(Delivery.id, Delivery.event_id, Delivery.endpoint_id, Delivery.created_at)
        .where(Delivery.tenant_id == job.tenant_id, Delivery.status == DEAD, Delivery.completed_at <= job.created_at)
        .order_by(Delivery.created_at, Delivery.id)
    )
    if job.endpoint_id is not None:
        query = query.where(Delivery.endpoint_id == job.endpoint_id)
    if job.delivery_ids is not None:
        query = query.where(Delivery.id.in_([uuid.UUID(value) for value in job.delivery_ids]))
    return within(query, Delivery.created_at, job.since, job.until)


async def count(session: AsyncSession, query: Select[Any]) -> int:
    return int(await session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)


async def room(session: AsyncSession, job: ReplayJob, max_in_flight: int) -> int:
    """How many more deliveries the job may queue before its earlier ones are delivered."""
    waiting = await count(
        session, select(Delivery.id).where(Delivery.replay_job_id == job.id, Delivery.status.in_(OPEN_STATUSES))
    )
    return max(0, max_in_flight - waiting)


async def replay_batch(session: AsyncSession, job: ReplayJob, limit: int) -> None:
    """New replay deliveries (own webhook-id) for the next events of the window: at most ``limit``
    deliveries (the job's room in flight), so as many events as that many deliveries to every target."""
    targets = await _targets(session, job)
    per_event = max(1, len(targets))
    events = (await session.execute(_after(replay_events(job), Event.received_at, Event.id, job).limit(max(1, limit // per_event)))).all()
    if not events:
        _complete(job)
        return
    pairs = [(event, endpoint.id) for event in events for endpoint in targets if subscribed(endpoint.event_types, event.type, operational=False)]  # replay_events: sourced events only
    if job.only_failed:
        pairs = await _still_dead(session, pairs)
    elif pairs:  # a delivery still waiting is made due now, not doubled under another webhook-id (event_replay)
        joined = await join_waiting(session, [(event.id, endpoint_id) for event, endpoint_id in pairs])
        pairs = [(event, endpoint_id) for event, endpoint_id in pairs if (event.id, endpoint_id) not in joined]
    rows = [
        {**delivery_row(event, endpoint_id), "priority": REPLAY_PRIORITY, "is_replay": True, "replay_job_id": job.id}
        for event, endpoint_id in pairs
    ]
    if rows:
        await session.execute(insert(Delivery), rows)
    job.done += len(events)
    job.skipped += len(events) - len({event.id for event, _ in pairs})
    job.cursor_at, job.cursor_id = events[-1].received_at, str(events[-1].id)


async def redrive_batch(session: AsyncSession, job: ReplayJob, limit: int) -> None:
    """Revive the next ``limit`` dead letters in place: same delivery, same webhook-id (the receiver
    never acknowledged it), a fresh retry schedule. Skipped: those whose endpoint is gone, and those
    whose event another delivery to that endpoint has delivered since it was made, or is retrying
    (a replay), or another dead letter of the batch sends again (an original and its dead replay):
    reviving those would send the event twice, under two webhook-ids."""
    letters = (await session.execute(_after(dead_letters(job), Delivery.created_at, Delivery.id, job).limit(limit))).all()
    if not letters:
        _complete(job)
        return
    live = set(
        await session.scalars(
            select(Endpoint.id).where(
                Endpoint.id.in_({letter.endpoint_id for letter in letters}),
                Endpoint.enabled.is_(True),
                Endpoint.deleted_at.is_(None),
            )
        )
    )
    superseding = await _superseding(session, letters)
    revive, taken = [], set()
    for letter in reversed(letters):  # the newest dead letter of an (event, endpoint) pair speaks for it
        pair = (letter.event_id, letter.endpoint_id)
        later = any(status != SUCCEEDED or created_at > letter.created_at for status, created_at in superseding[pair])
        if letter.endpoint_id in live and pair not in taken and not later:
            revive.append(letter.id)
            taken.add(pair)
    if revive:
        await session.execute(
            update(Delivery)
            .where(Delivery.id.in_(revive), Delivery.status == DEAD)
            .values(
                status=PENDING,
                priority=REPLAY_PRIORITY,
                next_attempt_at=utcnow(),
                completed_at=None,
                locked_until=None,
                retry_offset=Delivery.attempt_count,
                replay_job_id=job.id,
            )
            .execution_options(synchronize_session=False)
        )
    job.done += len(letters)
    job.skipped += len(letters) - len(revive)
    job.cursor_at, job.cursor_id = letters[-1].created_at, str(letters[-1].id)


async def backfill_batch(session: AsyncSession, job: ReplayJob, events: Sequence[dict[str, Any]], complete: bool) -> None:
    """Store the listed Stripe events through the ingest dedupe and fan out the new ones; events
    already stored (the gateway got them live) are skipped, so nothing is delivered twice."""
    source = await session.get(Source, job.source_id)
    if source is None or source.deleted_at is not None:
        raise JobFailed("the source was deleted")
    if events:
        rows = [_stored_form(job, source, event) for event in events]
        new_ids = list(await session.scalars(insert_once(session.bind.dialect.name, rows)))
        if new_ids:
            await fan_out(session, list(await session.scalars(select(Event).where(Event.id.in_(new_ids)))))
        job.done += len(events)
        job.skipped += len(events) - len(new_ids)
        job.cursor_id = events[-1]["id"]
    if complete:
        _complete(job)


async def withdraw(session: AsyncSession, job: ReplayJob) -> None:
    """On cancel: a replay's deliveries not yet tried disappear; a redrive's go back to the dead letters."""
    now = utcnow()
    untried = (
        Delivery.replay_job_id == job.id,
        Delivery.status == PENDING,
        Delivery.attempt_count == Delivery.retry_offset,
        unleased(now),
    )
    if job.kind == "replay":
        await session.execute(delete(Delivery).where(*untried).execution_options(synchronize_session=False))
    else:
        await session.execute(
            update(Delivery)
            .where(*untried)
            .values(status=DEAD, next_attempt_at=None, completed_at=now)
            .execution_options(synchronize_session=False)
        )


async def _targets(session: AsyncSession, job: ReplayJob) -> list[Endpoint]:
    query = select(Endpoint).where(
        Endpoint.tenant_id == job.tenant_id, Endpoint.enabled.is_(True), Endpoint.deleted_at.is_(None)
    )
    if job.endpoint_id is None:
        return list(await session.scalars(query))
    endpoint = await session.scalar(query.where(Endpoint.id == job.endpoint_id))
    if endpoint is None:
        raise JobFailed("the endpoint was deleted or disabled")
    return [endpoint]


_SETTLED_OR_OPEN = frozenset({SUCCEEDED, *OPEN_STATUSES})


async def _statuses(session: AsyncSession, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> dict[tuple[uuid.UUID, uuid.UUID], set[str]]:
    """The statuses of every delivery of these (event, endpoint) pairs."""
    statuses: dict[tuple[uuid.UUID, uuid.UUID], set[str]] = defaultdict(set)
    rows = await session.execute(
        select(Delivery.event_id, Delivery.endpoint_id, Delivery.status).where(
            Delivery.event_id.in_({event_id for event_id, _ in pairs}),
            Delivery.endpoint_id.in_({endpoint_id for _, endpoint_id in pairs}),
        )
    )
    for event_id, endpoint_id, status in rows:
        statuses[(event_id, endpoint_id)].add(status)
    return statuses


async def _superseding(session: AsyncSession, letters: Sequence[Any]) -> dict[tuple[uuid.UUID, uuid.UUID], list[tuple[str, datetime]]]:
    """Per (event, endpoint) pair of these dead letters: the status and creation time of each of its
    deliveries that succeeded or is still open."""
    found: dict[tuple[uuid.UUID, uuid.UUID], list[tuple[str, datetime]]] = defaultdict(list)
    rows = await session.execute(
        select(Delivery.event_id, Delivery.endpoint_id, Delivery.status, Delivery.created_at).where(
            Delivery.event_id.in_({letter.event_id for letter in letters}),
            Delivery.endpoint_id.in_({letter.endpoint_id for letter in letters}),
            Delivery.status.in_(_SETTLED_OR_OPEN),
        )
    )
    for event_id, endpoint_id, status, created_at in rows:
        found[(event_id, endpoint_id)].append((status, created_at))
    return found


async def _still_dead(session: AsyncSession, pairs: list[tuple[Any, uuid.UUID]]) -> list[tuple[Any, uuid.UUID]]:
    """``only_failed``: pairs whose delivery died and that no other delivery has since settled or is retrying."""
    statuses = await _statuses(session, [(event.id, endpoint_id) for event, endpoint_id in pairs])
    return [
        (event, endpoint_id)
        for event, endpoint_id in pairs
        if DEAD in statuses[(event.id, endpoint_id)] and not statuses[(event.id, endpoint_id)] & _SETTLED_OR_OPEN
    ]


def _stored_form(job: ReplayJob, source: Source, event: dict[str, Any]) -> dict[str, object]:
    body = _json.encode(event)
    identity = providers.identify("stripe", body, event, {})
    return event_row(
        job.tenant_id,
        source.id,
        external_id=identity.external_id,
        type=identity.type,
        created_at=identity.created_at,
        priority=classify(identity.type, source.priorities),  # type: ignore[arg-type]
        body=body,
        headers={},
        facts=stripe_facts(identity.type, event),
    )


def _after(
    query: Select[Any], at: InstrumentedAttribute[datetime], row_id: InstrumentedAttribute[uuid.UUID], job: ReplayJob
) -> Select[Any]:
    """Rows after the job's cursor, in the (time, id) order the query already has."""
    if job.cursor_at is None or job.cursor_id is None:
        return query
    cursor_at, cursor_id = job.cursor_at, uuid.UUID(job.cursor_id)
    after: ColumnElement[bool] = or_(at > cursor_at, and_(at == cursor_at, row_id > cursor_id))
    return query.where(after)


def _complete(job: ReplayJob) -> None:
    job.status, job.finished_at, job.total = COMPLETED, utcnow(), job.done
