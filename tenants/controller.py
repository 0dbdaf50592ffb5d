"""``/api/v1/tenants``: the operator provisions tenants."""

from __future__ import annotations

import uuid

from litestar import Controller, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.problems import not_found
from tenants.auth import require_operator
from tenants.models import Tenant
from tenants.schemas import TenantCreate, TenantOut
from tenants.service import create_tenant


def _shape(tenant: Tenant, api_key: str | None = None) -> TenantOut:
    return TenantOut(id=tenant.id, name=tenant.name, created_at=tenant.created_at, api_key=api_key)


class TenantController(Controller):
    path = "/api/v1/tenants"
    tags = ["operator"]
    guards = [require_operator]

    @post(operation_id="createTenant", summary="Create a tenant; its API key is shown once")
    async def create(self, db_session: AsyncSession, data: TenantCreate) -> TenantOut:
        tenant, key = await create_tenant(db_session, data.name)
        return _shape(tenant, key)

    @get("/{tenant_id:uuid}", operation_id="getTenant")
    async def get_tenant(self, db_session: AsyncSession, tenant_id: uuid.UUID) -> TenantOut:
        tenant = await db_session.get(Tenant, tenant_id)
        if tenant is None:
            raise not_found("tenant")
        return _shape(tenant)
