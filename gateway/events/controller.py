"""``/api/v1/events``: the tenant's event log, newest first."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec
from litestar import Controller, get
from sqlalchemy import select

from gateway.events.models import Delivery, Event
from gateway.events.repository import EventRepository
from gateway.events.schemas import DeliveryOut, EventOut
from gateway.pagination import Page, page_of, paginate
from gateway.repository import where_equal, within
from tenants.auth import tenant_scoped


class EventController(Controller):
    path = "/api/v1/events"
    tags = ["events"]
    dependencies = tenant_scoped("repo", EventRepository)

    @get(operation_id="listEvents", summary="List events, newest first")
    async def list_events(
        self,
        repo: EventRepository,
        type: str | None = None,
        source_id: uuid.UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[EventOut]:
        query = where_equal(repo.scoped(), {Event.type: type, Event.source_id: source_id})
        query = within(query, Event.received_at, since, until)
        rows = await repo.fetch(paginate(query, Event.received_at, Event.id, cursor, limit))
        return page_of(rows, limit, "received_at", EventOut.of)

    @get("/{event_id:uuid}", operation_id="getEvent", summary="An event, its exact payload and its deliveries")
    async def get_event(self, repo: EventRepository, event_id: uuid.UUID) -> EventOut:
        event = await repo.get(event_id)
        deliveries = await repo.session.scalars(
            select(Delivery).where(Delivery.event_id == event.id).order_by(Delivery.created_at, Delivery.id)
        )
        out = EventOut.of(event)
        out.headers = event.headers
        out.payload = msgspec.Raw(event.body)
        out.deliveries = [DeliveryOut.of(d) for d in deliveries]
        return out
