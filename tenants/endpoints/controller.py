"""``/api/v1/endpoints``: where a tenant's events are delivered, with their signing secrets and breaker state."""

from __future__ import annotations

import uuid

from litestar import Controller, delete, get, patch, post
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.breaker import Breaker
from gateway.pagination import Page
from gateway.settings import Settings
from tenants.auth import authenticate_tenant
from tenants.crypto import SecretBox
from tenants.endpoints.schemas import EndpointCreate, EndpointOut, EndpointUpdate, SecretRotate
from tenants.endpoints.service import EndpointService
from tenants.schemas import SecretOut


def _service(
    db_session: AsyncSession,
    tenant_id: uuid.UUID,
    secret_box: SecretBox,
    settings: Settings,
    breaker: Breaker,
) -> EndpointService:
    return EndpointService(db_session, tenant_id, secret_box, settings, breaker)


class EndpointController(Controller):
    path = "/api/v1/endpoints"
    tags = ["endpoints"]
    dependencies = {"tenant_id": Provide(authenticate_tenant), "service": Provide(_service, sync_to_thread=False)}

    @post(operation_id="createEndpoint", summary="Register an endpoint and get its signing secret")
    async def create(self, service: EndpointService, data: EndpointCreate) -> EndpointOut:
        endpoint, secret = await service.create(data)
        return await service.shape(endpoint, secret)

    @get(operation_id="listEndpoints", summary="List endpoints, newest first")
    async def list_endpoints(
        self, service: EndpointService, cursor: str | None = None, limit: int = 50
    ) -> Page[EndpointOut]:
        return await service.page(cursor, limit)

    @get("/{endpoint_id:uuid}", operation_id="getEndpoint")
    async def get_endpoint(self, service: EndpointService, endpoint_id: uuid.UUID) -> EndpointOut:
        return await service.shape(await service.repo.get(endpoint_id))

    @patch("/{endpoint_id:uuid}", operation_id="updateEndpoint", summary="Change the URL, filter, rate limit or state")
    async def update(self, service: EndpointService, endpoint_id: uuid.UUID, data: EndpointUpdate) -> EndpointOut:
        return await service.shape(await service.update(endpoint_id, data))

    @delete("/{endpoint_id:uuid}", operation_id="deleteEndpoint", summary="Delete an endpoint (its deliveries stay)")
    async def delete_endpoint(self, service: EndpointService, endpoint_id: uuid.UUID) -> None:
        await service.delete(endpoint_id)

    @post(
        "/{endpoint_id:uuid}/rotate-secret",
        operation_id="rotateEndpointSecret",
        summary="Rotate: a new signing secret; the old ones sign until the grace period ends",
    )
    async def rotate_secret(self, service: EndpointService, endpoint_id: uuid.UUID, data: SecretRotate | None = None) -> SecretOut:
        return await service.rotate_secret(endpoint_id, data or SecretRotate())

    @get("/{endpoint_id:uuid}/secret", operation_id="revealEndpointSecrets", summary="Active secrets, newest first")
    async def reveal(self, service: EndpointService, endpoint_id: uuid.UUID) -> list[SecretOut]:
        return await service.reveal(endpoint_id)
