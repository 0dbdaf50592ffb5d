"""Hookgate's own events (``delivery.dead``, ``endpoint.circuit_opened``, …), sent through the
same pipeline to the tenant's endpoints that subscribe to them by type."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.fanout import delivery_row, fan_out, insert_deliveries
from gateway.database import new_id, utcnow
from gateway.doorbell import Doorbell, ring_safely
from gateway.events.models import Event
from gateway.problems import Problem
from tenants.endpoints.models import Endpoint
from tenants.endpoints.service import EndpointRepository

DELIVERY_DEAD = "delivery.dead"
CIRCUIT_OPENED = "endpoint.circuit_opened"
CIRCUIT_CLOSED = "endpoint.circuit_closed"
ENDPOINT_DISABLED = "endpoint.disabled"
TEST = "hookgate.test"


def _event(tenant_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> Event:
    now, event_id = utcnow(), new_id()
    body = msgspec.json.encode({"type": event_type, "timestamp": now.isoformat(), "data": data})
    return Event(
        id=event_id,
        tenant_id=tenant_id,
        source_id=None,
        external_id=f"hg_{event_id.hex}",
        type=event_type,
        priority="high",
        body=body,
        headers={"content-type": "application/json"},
        received_at=now,
    )


async def emit(
    session: AsyncSession, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any], *, exclude: uuid.UUID | None
) -> Event:
    """Store the event and fan it out in the caller's transaction, skipping the endpoint that caused it."""
    event = _event(tenant_id, event_type, data)
    session.add(event)
    await session.flush()
    await fan_out(session, [event], exclude=exclude)
    return event


async def disable_endpoint(session: AsyncSession, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, reason: str) -> bool:
    """Disable the endpoint and tell the tenant's other endpoints (``endpoint.disabled``), in the
    caller's transaction; False if it was disabled already (by whoever announced it then)."""
    disabled = await session.scalar(
        update(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.enabled.is_(True)).values(enabled=False).returning(Endpoint.id)
    )
    if disabled is None:
        return False
    await emit(session, tenant_id, ENDPOINT_DISABLED, {"endpoint_id": str(endpoint_id), "reason": reason}, exclude=endpoint_id)
    return True


async def send_test(session: AsyncSession, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> tuple[Event, uuid.UUID]:
    """A synthetic ``hookgate.test`` event delivered to one endpoint only."""
    event = _event(tenant_id, TEST, {"endpoint_id": str(endpoint_id), "message": "Hookgate test event"})
    event.fanned_out_at = event.received_at
    session.add(event)
    await session.flush()
    row = delivery_row(event, endpoint_id)
    await insert_deliveries(session, [row])
    return event, row["id"]  # type: ignore[return-value]


async def send_test_and_ring(
    session: AsyncSession, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, doorbell: Doorbell
) -> tuple[Event, uuid.UUID]:
    """A test event to one of the tenant's endpoints (404 for another tenant's), committed and rung.
    A disabled endpoint is refused, as replays to it are: its delivery would only be made dead."""
    endpoint = await EndpointRepository(session, tenant_id).get(endpoint_id)
    if not endpoint.enabled:
        raise Problem(409, "endpoint-disabled", "enable the endpoint before sending it a test event", endpoint_ids=[str(endpoint.id)])
    event, delivery_id = await send_test(session, tenant_id, endpoint.id)
    await session.commit()
    await ring_safely(doorbell, [event.id])
    return event, delivery_id
