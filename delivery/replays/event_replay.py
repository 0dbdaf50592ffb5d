"""Replays: new deliveries of a stored event — the original bytes, signed afresh under their own
``webhook-id`` (a receiver that deduplicated the original must not drop the replay).

Except where a delivery of the event to that endpoint is still waiting (pending or retrying, no
worker sending it): the receiver has not acknowledged it, and a second one under another
``webhook-id`` would have it process the event twice once both arrive. That delivery is made due
now with a fresh retry schedule instead, as a redrive revives a dead letter. One a worker is
sending right now gets a replay of its own: its attempt may be its last, and fail."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import insert, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.fanout import Subscriber, delivery_row, endpoints_for, subscribed
from gateway.database import utcnow
from gateway.doorbell import Doorbell, ring_safely
from gateway.events.models import OPEN_STATUSES, Delivery, Event
from gateway.events.repository import DeliveryRepository, EventRepository, unleased
from gateway.problems import Problem
from tenants.endpoints.models import Endpoint
from tenants.endpoints.service import EndpointRepository


async def replay_event(session: AsyncSession, event: Event, endpoint_ids: list[uuid.UUID] | None) -> list[uuid.UUID]:
    """Queue one replay delivery per chosen endpoint (default: every enabled endpoint subscribed
    to the event's type), or make the one still under way due now; returns their ids. The caller
    commits and rings."""
    targets: list[Endpoint] | list[Subscriber] = await _chosen(session, event, endpoint_ids) if endpoint_ids else await _subscribed(session, event)
    if not targets:
        raise Problem(409, "no-endpoints", f"no enabled endpoint subscribes to {event.type!r}; name endpoint_ids to replay anyway")
    joined = await join_waiting(session, [(event.id, endpoint.id) for endpoint in targets], leave_job=True)
    rows = [{**delivery_row(event, endpoint.id), "is_replay": True} for endpoint in targets if (event.id, endpoint.id) not in joined]
    if rows:
        await session.execute(insert(Delivery), rows)
    return [*joined.values(), *(row["id"] for row in rows)]  # type: ignore[misc]


async def join_waiting(
    session: AsyncSession, pairs: Collection[tuple[uuid.UUID, uuid.UUID]], *, leave_job: bool = False
) -> dict[tuple[uuid.UUID, uuid.UUID], uuid.UUID]:
    """Make the waiting (open, unleased) deliveries of these (event, endpoint) pairs due now with a
    fresh retry schedule; returns them by pair. ``leave_job``: a single replay's 202 promised them,
    so they leave the job that queued them (its cancel must not withdraw them); a bulk job's batch
    leaves them where they are (another job's cancel and pacing still cover them)."""
    now = utcnow()
    rows = await session.execute(
        update(Delivery)
        .where(
            tuple_(Delivery.event_id, Delivery.endpoint_id).in_(list(pairs)),
            Delivery.status.in_(OPEN_STATUSES),
            unleased(now),
        )
        .values(next_attempt_at=now, retry_offset=Delivery.attempt_count, **({"replay_job_id": None} if leave_job else {}))
        .returning(Delivery.event_id, Delivery.endpoint_id, Delivery.id)
        .execution_options(synchronize_session=False)
    )
    return {(event_id, endpoint_id): delivery_id for event_id, endpoint_id, delivery_id in rows}


async def replay_and_ring(
    session: AsyncSession, tenant_id: uuid.UUID, event_id: uuid.UUID, endpoint_ids: list[uuid.UUID] | None, doorbell: Doorbell
) -> tuple[Event, list[Delivery]]:
    """Replay one of the tenant's events (404 for another tenant's), commit, ring; the new deliveries."""
    event = await EventRepository(session, tenant_id).get(event_id)
    ids = await replay_event(session, event, endpoint_ids)
    await session.commit()
    await ring_safely(doorbell, [event.id])
    repo = DeliveryRepository(session, tenant_id)
    return event, await repo.fetch(repo.scoped().where(Delivery.id.in_(ids)).order_by(Delivery.endpoint_id))


async def _chosen(session: AsyncSession, event: Event, endpoint_ids: list[uuid.UUID]) -> list[Endpoint]:
    repo = EndpointRepository(session, event.tenant_id)
    endpoints = [await repo.get(endpoint_id) for endpoint_id in dict.fromkeys(endpoint_ids)]
    disabled = [str(endpoint.id) for endpoint in endpoints if not endpoint.enabled]
    if disabled:
        raise Problem(409, "endpoint-disabled", "enable these endpoints before replaying to them", endpoint_ids=disabled)
    return endpoints


async def _subscribed(session: AsyncSession, event: Event) -> list[Subscriber]:
    endpoints = (await endpoints_for(session, [event.tenant_id])).get(event.tenant_id, [])
    return [endpoint for endpoint in endpoints if subscribed(endpoint.event_types, event.type, operational=event.source_id is None)]
