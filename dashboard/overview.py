"""The overview: the last 24 hours by the hour (events received, delivery success ratio) and what
needs attention now (backlog, open circuits, open anomalies). Counting is done by the database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from litestar import Request, get
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from dashboard.charts import bar_chart, line_chart
from dashboard.sessions import Viewer
from dashboard.web import page
from delivery.breaker import Breaker
from gateway.database import utcnow
from gateway.events.models import DEAD, FAILED, PENDING, SUCCEEDED, Delivery, Event
from gateway.settings import Settings
from ml.online.models import Anomaly
from tenants.crypto import SecretBox
from tenants.endpoints.service import EndpointService

HOURS = 24


@dataclass(frozen=True)
class Hour:
    start: datetime
    events: int
    succeeded: int
    finished: int  # succeeded + dead: deliveries whose outcome is known

    @property
    def success_ratio(self) -> float | None:
        return self.succeeded / self.finished if self.finished else None


def _hour_of(session: AsyncSession, column: InstrumentedAttribute[datetime]) -> ColumnElement[Any]:
    """The hour a timestamp falls in, as text both backends produce the same way."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24")
    return func.strftime("%Y-%m-%d %H", column)


async def last_day(session: AsyncSession, tenant_id: uuid.UUID, now: datetime) -> list[Hour]:
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    event_hour = _hour_of(session, Event.received_at)
    events = dict(
        (await session.execute(
            select(event_hour, func.count())
            .where(Event.tenant_id == tenant_id, Event.source_id.is_not(None), Event.received_at >= start)
            .group_by(event_hour)
        )).all()
    )
    delivery_hour = _hour_of(session, Delivery.completed_at)
    outcomes: dict[tuple[str, str], int] = {
        (hour, status): count
        for hour, status, count in (await session.execute(
            select(delivery_hour, Delivery.status, func.count())
            .where(Delivery.tenant_id == tenant_id, Delivery.completed_at >= start, Delivery.status.in_([SUCCEEDED, DEAD]))
            .group_by(delivery_hour, Delivery.status)
        )).all()
    }
    hours = []
    for index in range(HOURS):
        at = start + timedelta(hours=index)
        key = at.strftime("%Y-%m-%d %H")
        ok, dead = outcomes.get((key, SUCCEEDED), 0), outcomes.get((key, DEAD), 0)
        hours.append(Hour(at, events.get(key, 0), ok, ok + dead))
    return hours


async def _count(session: AsyncSession, query: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(query.subquery())) or 0)


@get("/", operation_id="dashboardOverview", include_in_schema=False)
async def overview(
    request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, settings: Settings, secret_box: SecretBox, breaker: Breaker
) -> Any:
    tenant_id = viewer.tenant_id
    hours = await last_day(db_session, tenant_id, utcnow())
    backlog = await _count(  # events, as the list the tile leads to shows them (an event waits on one or more endpoints)
        db_session, select(Delivery.event_id).where(Delivery.tenant_id == tenant_id, Delivery.status.in_([PENDING, FAILED])).distinct()
    )
    dead = await _count(db_session, select(Delivery.id).where(Delivery.tenant_id == tenant_id, Delivery.status == DEAD))
    anomalies = await _count(db_session, select(Anomaly.id).where(
        Anomaly.tenant_id == tenant_id, Anomaly.ended_at.is_(None), Anomaly.acknowledged_at.is_(None)
    ))
    service = EndpointService(db_session, tenant_id, secret_box, settings, breaker)
    endpoints = await service.repo.fetch(service.repo.scoped())
    states = [(endpoint, (await service.shape(endpoint)).breaker.state) for endpoint in endpoints]
    return page(
        request,
        "overview.html",
        events_chart=bar_chart([(h.start, h.events) for h in hours], label="events received"),
        ratio_chart=line_chart([(h.start, h.success_ratio) for h in hours], label="delivery success"),
        events_total=sum(h.events for h in hours),
        succeeded=sum(h.succeeded for h in hours),
        finished=sum(h.finished for h in hours),
        backlog=backlog,
        dead=dead,
        # A disabled endpoint's breaker stays as it was, but nothing waits on it.
        open_circuits=[endpoint for endpoint, state in states if endpoint.enabled and state in ("open", "half_open")],
        anomalies=anomalies,
        endpoint_count=len(endpoints),
    )
