"""``/api/v1/deliveries`` (the dead-letter queue is ``status=dead``) and endpoint test sends."""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec
from litestar import Controller, get, post
from litestar.di import Provide
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.operational import send_test
from gateway.doorbell import Doorbell, ring_safely
from gateway.events.models import Attempt, Delivery
from gateway.events.schemas import AttemptOut, DeliveryOut
from gateway.pagination import Page, page_of, paginate
from gateway.repository import TenantRepository, where_equal
from tenants.auth import authenticate_tenant
from tenants.endpoints.service import EndpointRepository


class DeliveryRepository(TenantRepository[Delivery]):
    model = Delivery
    noun = "delivery"


class TestSent(msgspec.Struct):
    event_id: uuid.UUID
    delivery_id: uuid.UUID


def _repo(db_session: AsyncSession, tenant_id: uuid.UUID) -> DeliveryRepository:
    return DeliveryRepository(db_session, tenant_id)


class DeliveryController(Controller):
    path = "/api/v1"
    tags = ["deliveries"]
    dependencies = {"tenant_id": Provide(authenticate_tenant), "repo": Provide(_repo, sync_to_thread=False)}

    @get("/deliveries", operation_id="listDeliveries", summary="Deliveries, newest first; status=dead is the dead-letter queue")
    async def list_deliveries(
        self,
        repo: DeliveryRepository,
        status: Literal["pending", "succeeded", "failed", "dead"] | None = None,
        endpoint_id: uuid.UUID | None = None,
        event_id: uuid.UUID | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[DeliveryOut]:
        query = where_equal(
            repo.scoped(), {Delivery.status: status, Delivery.endpoint_id: endpoint_id, Delivery.event_id: event_id}
        )
        rows = await repo.fetch(paginate(query, Delivery.created_at, Delivery.id, cursor, limit))
        return page_of(rows, limit, "created_at", DeliveryOut.of)

    @get("/deliveries/{delivery_id:uuid}", operation_id="getDelivery")
    async def get_delivery(self, repo: DeliveryRepository, delivery_id: uuid.UUID) -> DeliveryOut:
        return DeliveryOut.of(await repo.get(delivery_id))

    @get("/deliveries/{delivery_id:uuid}/attempts", operation_id="listAttempts", summary="Every HTTP try, oldest first")
    async def list_attempts(self, repo: DeliveryRepository, delivery_id: uuid.UUID) -> list[AttemptOut]:
        delivery = await repo.get(delivery_id)
        rows = await repo.session.scalars(
            select(Attempt).where(Attempt.delivery_id == delivery.id).order_by(Attempt.number)
        )
        return [AttemptOut.of(row) for row in rows]

    @post("/endpoints/{endpoint_id:uuid}/test", operation_id="testEndpoint", status_code=202, summary="Send a hookgate.test event")
    async def test_endpoint(
        self, db_session: AsyncSession, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, doorbell: Doorbell
    ) -> TestSent:
        endpoint = await EndpointRepository(db_session, tenant_id).get(endpoint_id)
        event, delivery_id = await send_test(db_session, tenant_id, endpoint.id)
        await db_session.commit()
        await ring_safely(doorbell, [event.id])
        return TestSent(event_id=event.id, delivery_id=delivery_id)
