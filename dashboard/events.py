"""The event log: filter by type, source, delivery status and time; an event's pretty-printed
payload, its deliveries and every attempt; replay to all endpoints or one."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from litestar import Controller, Request, get, post
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.sessions import Viewer
from dashboard.web import PREFIX, field, form, optional_uuid, page, see_other
from delivery.replays.event_replay import replay_and_ring
from gateway.database import utcnow
from gateway.doorbell import Doorbell
from gateway.events.models import FAILED, PENDING, Attempt, Delivery, Event
from gateway.events.priority import matching
from gateway.events.repository import EventRepository
from gateway.pagination import page_of, paginate
from gateway.problems import Problem
from gateway.repository import where_equal, within
from tenants.endpoints.models import Endpoint
from tenants.endpoints.service import EndpointRepository
from tenants.sources.models import Source
from tenants.sources.service import SourceRepository

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
# The delivery filter's choices, as the list shows them: "failed" is the API's name for a delivery
# that will be retried (dead is final), which reads the other way round on its own.
STATUSES = {
    "waiting": "waiting (pending or retrying)",
    "pending": "pending (not tried yet)",
    "failed": "retrying (failed, will retry)",
    "succeeded": "succeeded",
    "dead": "dead (gave up)",
}
_WAITING = (PENDING, FAILED)
# Source filter values besides a source's id: provider events, or Hookgate's own notices.
_FROM_SOURCES, _FROM_HOOKGATE = "sources", "hookgate"
PAGE_SIZE = 50


def _pretty(body: bytes) -> str:
    """Indented, or as stored where it is not JSON or is nested deeper than this page's stack allows
    (ingest parses it shallower in the stack: a payload it accepted can still be too deep here)."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return body.decode("utf-8", errors="replace")


async def endpoint_names(session: AsyncSession, tenant_id: uuid.UUID) -> dict[uuid.UUID, Endpoint]:
    """Every endpoint of the tenant, deleted ones too: old deliveries still name them."""
    rows = await session.scalars(select(Endpoint).where(Endpoint.tenant_id == tenant_id))
    return {row.id: row for row in rows}


class EventPages(Controller):
    path = "/events"

    @get(operation_id="dashboardEvents", include_in_schema=False)
    async def events(
        self,
        request: Request[Any, Any, Any],
        viewer: Viewer,
        db_session: AsyncSession,
        type: str = "",
        source_id: str = "",
        status: str = "",
        window: str = "",
        q: str = "",
        cursor: str | None = None,
    ) -> Any:
        repo, source_repo = EventRepository(db_session, viewer.tenant_id), SourceRepository(db_session, viewer.tenant_id)
        sources = await source_repo.fetch(source_repo.scoped())
        type, q = type.strip(), q.strip()
        query = where_equal(repo.scoped(), {Event.source_id: optional_uuid(source_id)})
        if type:  # exact, or a prefix as endpoints take it (charge.*)
            query = query.where(matching(Event.type, [type]) if type.endswith("*") else Event.type == type)
        if q:  # the provider's event id (evt_…), or Hookgate's
            query = query.where(Event.id == found if (found := optional_uuid(q)) else Event.external_id == q)
        if source_id in (_FROM_SOURCES, _FROM_HOOKGATE):
            query = query.where(Event.source_id.is_not(None) if source_id == _FROM_SOURCES else Event.source_id.is_(None))
        if status in STATUSES:
            wanted = _WAITING if status == "waiting" else (status,)
            query = query.where(exists().where(Delivery.event_id == Event.id, Delivery.status.in_(wanted)))
        if window in WINDOWS:
            query = within(query, Event.received_at, utcnow() - WINDOWS[window], None)
        rows = await repo.fetch(paginate(query, Event.received_at, Event.id, cursor, PAGE_SIZE))
        result = page_of(rows, PAGE_SIZE, "received_at", lambda row: row)
        states = await _delivery_states(db_session, [row.id for row in result.data])
        filters = {"type": type, "source_id": source_id, "status": status, "window": window, "q": q}
        return page(request, "events.html", events=result.data, next_cursor=result.next_cursor, states=states, filters=filters,
                    sources={s.id: s for s in sources}, statuses=STATUSES, windows=WINDOWS)

    @get("/{event_id:uuid}", operation_id="dashboardEvent", include_in_schema=False)
    async def event(self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, event_id: uuid.UUID) -> Any:
        event = await EventRepository(db_session, viewer.tenant_id).get(event_id)
        deliveries = list(await db_session.scalars(
            select(Delivery).where(Delivery.event_id == event.id).order_by(Delivery.created_at, Delivery.id)
        ))
        attempts: dict[uuid.UUID, list[Attempt]] = {d.id: [] for d in deliveries}
        for attempt in await db_session.scalars(
            select(Attempt).where(Attempt.delivery_id.in_(attempts)).order_by(Attempt.number)
        ):
            attempts[attempt.delivery_id].append(attempt)
        endpoint_repo = EndpointRepository(db_session, viewer.tenant_id)
        live = await endpoint_repo.fetch(endpoint_repo.scoped().where(Endpoint.enabled.is_(True)))
        source = await db_session.get(Source, event.source_id) if event.source_id else None
        return page(request, "event.html", event=event, payload=_pretty(event.body), deliveries=deliveries, attempts=attempts,
                    endpoints=await endpoint_names(db_session, viewer.tenant_id), live_endpoints=live, source=source,
                    error=request.query_params.get("error"))

    @post("/{event_id:uuid}/replay", operation_id="dashboardReplayEvent", include_in_schema=False)
    async def replay(
        self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, event_id: uuid.UUID, doorbell: Doorbell
    ) -> Any:
        endpoint_id = optional_uuid(field(await form(request), "endpoint_id"))
        try:
            _event, deliveries = await replay_and_ring(db_session, viewer.tenant_id, event_id, [endpoint_id] if endpoint_id else None, doorbell)
        except Problem as exc:
            if exc.status_code == 404:
                raise
            return see_other(f"{PREFIX}/events/{event_id}?error={exc.kind}")
        joined = deliveries and not any(delivery.is_replay for delivery in deliveries)  # each waiting one made due now
        return see_other(f"{PREFIX}/events/{event_id}", "replay-joined" if joined else "replayed")


async def _delivery_states(session: AsyncSession, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Per event, how many of its deliveries are in each status (for the list's badges)."""
    states: dict[uuid.UUID, dict[str, int]] = {event_id: {} for event_id in event_ids}
    for event_id, status in (await session.execute(
        select(Delivery.event_id, Delivery.status).where(Delivery.event_id.in_(event_ids))
    )).all():
        states[event_id][status] = states[event_id].get(status, 0) + 1
    return states
