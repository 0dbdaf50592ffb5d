"""Replays: new deliveries of a stored event — the original bytes, signed afresh under their own
``webhook-id`` (a receiver that deduplicated the original must not drop the replay)."""

from __future__ import annotations

import uuid

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.fanout import Subscriber, delivery_row, endpoints_for, subscribed
from gateway.doorbell import Doorbell, ring_safely
from gateway.events.models import Delivery, Event
from gateway.events.repository import DeliveryRepository, EventRepository
from gateway.problems import Problem
from tenants.endpoints.models import Endpoint
from tenants.endpoints.service import EndpointRepository


async def replay_event(session: AsyncSession, event: Event, endpoint_ids: list[uuid.UUID] | None) -> list[uuid.UUID]:
    """Queue one replay delivery per chosen endpoint (default: every enabled endpoint subscribed
    to the event's type); returns the new delivery ids. The caller commits and rings."""
    targets: list[Endpoint] | list[Subscriber] = await _chosen(session, event, endpoint_ids) if endpoint_ids else await _subscribed(session, event)
    if not targets:
        raise Problem(409, "no-endpoints", f"no enabled endpoint subscribes to {event.type!r}; name endpoint_ids to replay anyway")
    rows = [{**delivery_row(event, endpoint.id), "is_replay": True} for endpoint in targets]
    await session.execute(insert(Delivery), rows)
    return [row["id"] for row in rows]  # type: ignore[misc]


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
