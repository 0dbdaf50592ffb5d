"""Dead letters (filter, redrive the selected or all that match, purge) and the replay jobs they
start. Redrives are ReplayService jobs, exactly what the API's redrive creates."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, get, post
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.events import WINDOWS, endpoint_names
from dashboard.sessions import Viewer
from dashboard.web import PREFIX, field, form, ids, optional_uuid, page, see_other
from delivery.replays.models import ReplayJob
from delivery.replays.schemas import RedriveCreate
from delivery.replays.service import ReplayService
from gateway.database import utcnow
from gateway.events.models import DEAD, Delivery, Event
from gateway.events.repository import DeliveryRepository
from gateway.pagination import page_of, paginate
from gateway.problems import Problem
from gateway.repository import where_equal, within

PAGE_SIZE = 50


def _since(window: str) -> Any:
    return utcnow() - WINDOWS[window] if window in WINDOWS else None


class DeadLetterPages(Controller):
    path = "/dead-letters"

    @get(operation_id="dashboardDeadLetters", include_in_schema=False)
    async def dead_letters(
        self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession,
        endpoint_id: str = "", window: str = "", cursor: str | None = None,
    ) -> Any:
        repo = DeliveryRepository(db_session, viewer.tenant_id)
        query = where_equal(repo.scoped(), {Delivery.status: DEAD, Delivery.endpoint_id: optional_uuid(endpoint_id)})
        query = within(query, Delivery.created_at, _since(window), None)
        rows = await repo.fetch(paginate(query, Delivery.created_at, Delivery.id, cursor, PAGE_SIZE))
        result = page_of(rows, PAGE_SIZE, "created_at", lambda row: row)
        events = await _events(db_session, [d.event_id for d in result.data])
        matching = await db_session.scalar(select(func.count()).select_from(query.subquery()))  # what "Redrive all" would take
        return page(request, "dead_letters.html", deliveries=result.data, next_cursor=result.next_cursor, events=events,
                    endpoints=await endpoint_names(db_session, viewer.tenant_id), filters={"endpoint_id": endpoint_id, "window": window},
                    windows=WINDOWS, error=request.query_params.get("error"), matching=matching)

    @post("/redrive", operation_id="dashboardRedrive", include_in_schema=False)
    async def redrive(self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession) -> Any:
        """``scope=selected`` redrives the ticked ones; ``scope=all`` everything the filters match."""
        data = await form(request)
        chosen = ids(data, "delivery_id")
        if field(data, "scope") == "selected":
            if not chosen:
                return see_other(f"{PREFIX}/dead-letters?error=none-selected")
            filters = RedriveCreate(delivery_ids=chosen)
        else:
            filters = RedriveCreate(endpoint_id=optional_uuid(field(data, "endpoint_id")), since=_since(field(data, "window")))
        await ReplayService(db_session, viewer.tenant_id).redrive(filters)
        return see_other(f"{PREFIX}/replays", "redrive-started")

    @post("/purge", operation_id="dashboardPurge", include_in_schema=False)
    async def purge(self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession) -> Any:
        repo = DeliveryRepository(db_session, viewer.tenant_id)
        data = await form(request)
        chosen, kept = ids(data, "delivery_id"), {name: field(data, name) for name in ("endpoint_id", "window") if field(data, name)}
        if not chosen:
            return see_other(f"{PREFIX}/dead-letters?error=none-selected")
        for delivery_id in chosen:
            try:
                await repo.purge_dead(delivery_id)
            except Problem as exc:  # redriven meanwhile (another tab, the API): the rest still go
                if exc.status_code != 409:
                    raise  # 404: gone, or another tenant's (the same answer, by design)
                await db_session.rollback()
        return see_other(f"{PREFIX}/dead-letters", "purged", **kept)  # back to the filtered list the user was working in


@post("/replays/{job_id:uuid}/cancel", operation_id="dashboardCancelReplay", include_in_schema=False)
async def cancel_replay(viewer: Viewer, db_session: AsyncSession, job_id: uuid.UUID) -> Any:
    try:
        await ReplayService(db_session, viewer.tenant_id).cancel(job_id)
    except Problem as exc:
        if exc.status_code != 409:
            raise
        return see_other(f"{PREFIX}/replays", "replay-finished")  # it finished meanwhile: nothing left to stop
    return see_other(f"{PREFIX}/replays", "replay-cancelled")


@get("/replays", operation_id="dashboardReplays", include_in_schema=False)
async def replays(request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, cursor: str | None = None) -> Any:
    repo = ReplayService(db_session, viewer.tenant_id).repo
    rows = await repo.fetch(paginate(repo.scoped(), ReplayJob.created_at, ReplayJob.id, cursor, PAGE_SIZE))
    result = page_of(rows, PAGE_SIZE, "created_at", lambda row: row)
    return page(request, "replays.html", jobs=result.data, next_cursor=result.next_cursor)


async def _events(session: AsyncSession, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, Event]:
    return {event.id: event for event in await session.scalars(select(Event).where(Event.id.in_(event_ids)))}
