"""Creating and changing sources; the secrets' plaintext leaves only through return values."""

from __future__ import annotations

import uuid

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import utcnow
from gateway.events.priority import patterns_error
from gateway.ingest import providers
from gateway.problems import Problem
from gateway.repository import TenantRepository
from gateway.settings import Settings
from tenants.crypto import SecretBox, new_token
from tenants.schemas import SecretInfo, SecretOut
from tenants.secrets import revealed, rotate
from tenants.sources.directory import SourceDirectory
from tenants.sources.models import Source, SourceSecret
from tenants.sources.schemas import SecretCreate, SourceCreate, SourceOut, SourceUpdate


class SourceRepository(TenantRepository[Source]):
    model = Source
    noun = "source"


class SourceService:
    def __init__(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        box: SecretBox,
        settings: Settings,
        directory: SourceDirectory | None = None,
    ) -> None:
        self.session = session
        self.directory = directory
        self.repo = SourceRepository(session, tenant_id)
        self.tenant_id = tenant_id
        self.box = box
        self.settings = settings

    def shape(self, source: Source, secret: str | None = None) -> SourceOut:
        return SourceOut(
            id=source.id,
            name=source.name,
            provider=source.provider,
            ingest_url=f"{self.settings.public_url.rstrip('/')}/ingest/{source.ingest_token}",
            priorities=source.priorities,
            secrets=[SecretInfo(s.id, s.created_at, s.expires_at) for s in source.secrets],
            has_stripe_api_key=source.stripe_api_key is not None,
            created_at=source.created_at,
            secret=secret,
        )

    def _checked_secret(self, provider: str, secret: str | None) -> str:
        if secret is None:
            return providers.generate_secret(provider)
        try:
            providers.validate_secret(provider, secret)
        except ValueError as exc:
            raise Problem(422, "invalid-secret", str(exc)) from None
        return secret

    async def create(self, data: SourceCreate) -> tuple[Source, str]:
        secret = self._checked_secret(data.provider, data.secret)
        source = Source(
            tenant_id=self.tenant_id,
            name=data.name,
            provider=data.provider,
            ingest_token=new_token(24),
            secrets=[SourceSecret(ciphertext=self.box.encrypt(secret), created_at=utcnow())],
        )
        self.session.add(source)
        await self.session.commit()
        return source, secret

    async def _commit(self, source: Source) -> None:
        await self.session.commit()
        if self.directory is not None:
            self.directory.forget(source.ingest_token)

    async def update(self, source_id: uuid.UUID, data: SourceUpdate) -> Source:
        source = await self.repo.get(source_id)
        if data.name is not msgspec.UNSET:
            source.name = data.name
        if data.priorities is not msgspec.UNSET:
            if data.priorities and (error := patterns_error(list(data.priorities))):
                raise Problem(422, "invalid-priorities", f"priorities: {error}")
            source.priorities = data.priorities or None
        if data.stripe_api_key is not msgspec.UNSET:
            if source.provider != "stripe":
                raise Problem(422, "not-stripe", f"only Stripe sources take a Stripe API key; this one is {source.provider}")
            source.stripe_api_key = None if data.stripe_api_key is None else self.box.encrypt(data.stripe_api_key)
        await self._commit(source)
        return source

    async def delete(self, source_id: uuid.UUID) -> None:
        """Soft delete: the token stops working, the events it brought stay in the log."""
        source = await self.repo.get(source_id)
        source.deleted_at = utcnow()
        await self._commit(source)

    async def add_secret(self, source_id: uuid.UUID, data: SecretCreate) -> SecretOut:
        source = await self.repo.get(source_id, for_update=True)
        grace = data.expire_previous_after_seconds
        added = rotate(
            self.box,
            source.secrets,
            SourceSecret,
            self._checked_secret(source.provider, data.secret),
            grace_seconds=self.settings.secret_grace_seconds if grace is None else grace,
        )
        await self._commit(source)
        return added

    async def reveal(self, source_id: uuid.UUID) -> list[SecretOut]:
        return revealed(self.box, (await self.repo.get(source_id)).secrets)
