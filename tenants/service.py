"""Provisioning tenants (operator) with their first API key; more keys and revoking them."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import utcnow
from gateway.repository import TenantRepository
from tenants.auth import issue_api_key
from tenants.models import ApiKey, Tenant


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    noun = "API key"

    async def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key; the plaintext is returned once and never stored."""
        key, plaintext = issue_api_key(self.tenant_id, name)
        self.session.add(key)
        await self.session.commit()
        return key, plaintext

    async def revoke(self, key_id: uuid.UUID) -> ApiKey:
        key = await self.get(key_id, for_update=True)
        key.revoked_at = key.revoked_at or utcnow()
        await self.session.commit()
        return key


async def create_tenant(session: AsyncSession, name: str) -> tuple[Tenant, str]:
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    key, plaintext = issue_api_key(tenant.id)
    session.add(key)
    await session.commit()
    return tenant, plaintext
