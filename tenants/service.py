"""Provisioning tenants (operator) with their first API key."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from tenants.auth import issue_api_key
from tenants.models import Tenant


async def create_tenant(session: AsyncSession, name: str) -> tuple[Tenant, str]:
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    key, plaintext = issue_api_key(tenant.id)
    session.add(key)
    await session.commit()
    return tenant, plaintext
