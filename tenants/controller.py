"""``/api/v1/tenants``: the operator provisions tenants and sets their limits."""

from __future__ import annotations

import uuid

import msgspec
from litestar import Controller, get, patch, post
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.problems import not_found
from gateway.settings import Settings
from tenants.auth import require_operator
from tenants.limits import delivery_concurrency, effective_limits, merged_overrides
from tenants.models import Tenant
from tenants.schemas import LimitsUpdate, TenantCreate, TenantOut
from tenants.service import create_tenant


def _shape(tenant: Tenant, settings: Settings, api_key: str | None = None) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        created_at=tenant.created_at,
        limits=effective_limits(tenant, settings),
        delivery_concurrency=delivery_concurrency(tenant, settings),
        api_key=api_key,
    )


async def _tenant(db_session: AsyncSession, tenant_id: uuid.UUID, *, for_update: bool = False) -> Tenant:
    """The tenant; ``for_update`` locks its row, so that concurrent partial updates merge in turn."""
    tenant = await db_session.get(Tenant, tenant_id, with_for_update=for_update)
    if tenant is None:
        raise not_found("tenant")
    return tenant


class TenantController(Controller):
    path = "/api/v1/tenants"
    tags = ["operator"]
    guards = [require_operator]

    @post(operation_id="createTenant", summary="Create a tenant; its API key is shown once")
    async def create(self, db_session: AsyncSession, settings: Settings, data: TenantCreate) -> TenantOut:
        tenant, key = await create_tenant(db_session, data.name)
        return _shape(tenant, settings, key)

    @get("/{tenant_id:uuid}", operation_id="getTenant", summary="A tenant with its effective limits")
    async def get_tenant(self, db_session: AsyncSession, settings: Settings, tenant_id: uuid.UUID) -> TenantOut:
        return _shape(await _tenant(db_session, tenant_id), settings)

    @patch(
        "/{tenant_id:uuid}",
        operation_id="updateTenantLimits",
        summary="Set admission limits per priority and the delivery concurrency (partial; null restores the default)",
    )
    async def update_limits(
        self, db_session: AsyncSession, settings: Settings, tenant_id: uuid.UUID, data: LimitsUpdate
    ) -> TenantOut:
        tenant = await _tenant(db_session, tenant_id, for_update=True)
        if data.limits is not msgspec.UNSET:
            tenant.limits = merged_overrides(tenant.limits, data)
        if data.delivery_concurrency is not msgspec.UNSET:
            tenant.delivery_concurrency = data.delivery_concurrency
        await db_session.commit()
        return _shape(tenant, settings)
