"""``/api/v1/sources``: a tenant's ingest sources and their rotating secrets."""

from __future__ import annotations

import uuid

from litestar import Controller, delete, get, patch, post
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.pagination import Page, page_of, paginate
from gateway.settings import Settings
from tenants.auth import authenticate_tenant
from tenants.crypto import SecretBox
from tenants.schemas import SecretOut
from tenants.sources.directory import SourceDirectory
from tenants.sources.models import Source
from tenants.sources.schemas import SecretCreate, SourceCreate, SourceOut, SourceUpdate
from tenants.sources.service import SourceService


def _service(
    db_session: AsyncSession,
    tenant_id: uuid.UUID,
    secret_box: SecretBox,
    settings: Settings,
    source_directory: SourceDirectory,
) -> SourceService:
    return SourceService(db_session, tenant_id, secret_box, settings, source_directory)


class SourceController(Controller):
    path = "/api/v1/sources"
    tags = ["sources"]
    dependencies = {"tenant_id": Provide(authenticate_tenant), "service": Provide(_service, sync_to_thread=False)}

    @post(operation_id="createSource", summary="Create a source and get its ingest URL and secret")
    async def create(self, service: SourceService, data: SourceCreate) -> SourceOut:
        source, secret = await service.create(data)
        return service.shape(source, secret)

    @get(operation_id="listSources", summary="List sources, newest first")
    async def list_sources(self, service: SourceService, cursor: str | None = None, limit: int = 50) -> Page[SourceOut]:
        rows = await service.repo.fetch(paginate(service.repo.scoped(), Source.created_at, Source.id, cursor, limit))
        return page_of(rows, limit, "created_at", service.shape)

    @get("/{source_id:uuid}", operation_id="getSource")
    async def get_source(self, service: SourceService, source_id: uuid.UUID) -> SourceOut:
        return service.shape(await service.repo.get(source_id))

    @patch("/{source_id:uuid}", operation_id="updateSource", summary="Rename, set priority overrides or the Stripe API key for backfills")
    async def update(self, service: SourceService, source_id: uuid.UUID, data: SourceUpdate) -> SourceOut:
        return service.shape(await service.update(source_id, data))

    @delete("/{source_id:uuid}", operation_id="deleteSource", summary="Delete a source (its events stay)")
    async def delete_source(self, service: SourceService, source_id: uuid.UUID) -> None:
        await service.delete(source_id)

    @post("/{source_id:uuid}/secrets", operation_id="addSourceSecret", summary="Rotate: add a secret")
    async def add_secret(self, service: SourceService, source_id: uuid.UUID, data: SecretCreate | None = None) -> SecretOut:
        return await service.add_secret(source_id, data or SecretCreate())

    @get("/{source_id:uuid}/secrets", operation_id="revealSourceSecrets", summary="Active secrets, in plaintext")
    async def reveal(self, service: SourceService, source_id: uuid.UUID) -> list[SecretOut]:
        return await service.reveal(source_id)
