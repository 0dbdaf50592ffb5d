"""``/api/v1/deliveries`` (the dead-letter queue is ``status=dead``), event replays and endpoint test sends."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.operational import send_test_and_ring
from delivery.replays.event_replay import replay_and_ring
from gateway.doorbell import Doorbell
from gateway.events.models import Attempt, Delivery
from gateway.events.repository import DeliveryRepository
from gateway.events.schemas import AttemptOut, DeliveryOut
from gateway.pagination import Page, page_of, paginate
from gateway.repository import where_equal, within
from tenants.auth import tenant_scoped


class TestSent(msgspec.Struct):
    event_id: uuid.UUID
    delivery_id: uuid.UUID


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    endpoint_ids: Annotated[list[uuid.UUID], msgspec.Meta(min_length=1, max_length=100)] | None = None


class ReplayOut(msgspec.Struct):
    event_id: uuid.UUID
    deliveries: list[DeliveryOut]


class DeliveryController(Controller):
    path = "/api/v1"
    tags = ["deliveries"]
    dependencies = tenant_scoped("repo", DeliveryRepository)

    @get("/deliveries", operation_id="listDeliveries", summary="Deliveries, newest first; status=dead is the dead-letter queue")
    async def list_deliveries(
        self,
        repo: DeliveryRepository,
        status: Literal["pending", "succeeded", "failed", "dead"] | None = None,
        endpoint_id: uuid.UUID | None = None,
        event_id: uuid.UUID | None = None,
        replay_job_id: uuid.UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[DeliveryOut]:
        """``since``/``until`` bound when the delivery was created (its event's fan-out or replay)."""
        query = where_equal(
            repo.scoped(), {
                Delivery.status: status,
                Delivery.endpoint_id: endpoint_id,
                Delivery.event_id: event_id,
                Delivery.replay_job_id: replay_job_id,
            }
        )
        query = within(query, Delivery.created_at, since, until)
        rows = await repo.fetch(paginate(query, Delivery.created_at, Delivery.id, cursor, limit))
        return page_of(rows, limit, "created_at", DeliveryOut.of)

    @get("/deliveries/{delivery_id:uuid}", operation_id="getDelivery")
    async def get_delivery(self, repo: DeliveryRepository, delivery_id: uuid.UUID) -> DeliveryOut:
        return DeliveryOut.of(await repo.get(delivery_id))

    @delete("/deliveries/{delivery_id:uuid}", operation_id="purgeDeadDelivery", summary="Purge a dead letter (the event stays)")
    async def purge(self, repo: DeliveryRepository, delivery_id: uuid.UUID) -> None:
        await repo.purge_dead(delivery_id)

    @post("/events/{event_id:uuid}/replay", operation_id="replayEvent", status_code=202, summary="Deliver a stored event again")
    async def replay(
        self, repo: DeliveryRepository, tenant_id: uuid.UUID, event_id: uuid.UUID, doorbell: Doorbell, data: ReplayRequest | None = None
    ) -> ReplayOut:
        """To the named endpoints, or to every enabled endpoint subscribed to its type."""
        event, rows = await replay_and_ring(repo.session, tenant_id, event_id, data.endpoint_ids if data else None, doorbell)
        return ReplayOut(event_id=event.id, deliveries=[DeliveryOut.of(row) for row in rows])

    @get("/deliveries/{delivery_id:uuid}/attempts", operation_id="listAttempts", summary="Every HTTP try, oldest first")
    async def list_attempts(
        self, repo: DeliveryRepository, delivery_id: uuid.UUID, cursor: str | None = None, limit: int = 50
    ) -> Page[AttemptOut]:
        delivery = await repo.get(delivery_id)
        query = paginate(
            select(Attempt).where(Attempt.delivery_id == delivery.id), Attempt.started_at, Attempt.id, cursor, limit, oldest_first=True
        )
        return page_of(list(await repo.session.scalars(query)), limit, "started_at", AttemptOut.of)

    @post("/endpoints/{endpoint_id:uuid}/test", operation_id="testEndpoint", status_code=202, summary="Send a hookgate.test event")
    async def test_endpoint(
        self, db_session: AsyncSession, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, doorbell: Doorbell
    ) -> TestSent:
        event, delivery_id = await send_test_and_ring(db_session, tenant_id, endpoint_id, doorbell)
        return TestSent(event_id=event.id, delivery_id=delivery_id)
