"""Registering and changing endpoints; their signing secrets' plaintext leaves only through return values."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import msgspec
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.breaker import Breaker, BreakerView
from delivery.signing import new_endpoint_secret
from delivery.ssrf import UnsafeURL, check_url
from gateway.database import utcnow
from gateway.events.priority import patterns_error
from gateway.pagination import Page, page_of, paginate
from gateway.problems import Problem
from gateway.repository import TenantRepository
from gateway.settings import Settings
from tenants.crypto import SecretBox
from tenants.endpoints.models import Endpoint, EndpointSecret
from tenants.endpoints.schemas import BreakerOut, EndpointCreate, EndpointOut, EndpointUpdate, SecretRotate
from tenants.models import Tenant
from tenants.schemas import SecretOut
from tenants.secrets import revealed, rotate

_log = logging.getLogger("hookgate.endpoints")


class EndpointRepository(TenantRepository[Endpoint]):
    model = Endpoint
    noun = "endpoint"


def _checked_event_types(event_types: list[str]) -> list[str]:
    """``*``, exact types, or prefixes (``invoice.*``): the only filters fan-out knows how to match."""
    if error := patterns_error(event_types):
        raise Problem(422, "invalid-event-types", f"event_types: {error}")
    return event_types


def _breaker_out(view: BreakerView) -> BreakerOut:
    retry_at = None if view.retry_at is None else datetime.fromtimestamp(view.retry_at, UTC)
    return BreakerOut(state=view.state, consecutive_failures=view.consecutive_failures, retry_at=retry_at)


def _out(endpoint: Endpoint, breaker: BreakerOut, secret: str | None = None) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        event_types=endpoint.event_types,
        rate_limit_per_second=endpoint.rate_limit_per_second,
        enabled=endpoint.enabled,
        created_at=endpoint.created_at,
        breaker=breaker,
        secret=secret,
    )


class EndpointService:
    def __init__(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        box: SecretBox,
        settings: Settings,
        breaker: Breaker,
    ) -> None:
        self.session = session
        self.repo = EndpointRepository(session, tenant_id)
        self.tenant_id = tenant_id
        self.box = box
        self.settings = settings
        self.breaker = breaker

    async def shape(self, endpoint: Endpoint, secret: str | None = None) -> EndpointOut:
        return _out(endpoint, await self._breaker(endpoint), secret)

    async def _breaker(self, endpoint: Endpoint) -> BreakerOut:
        """Display only: an unreachable breaker store must not fail reads or registrations."""
        try:
            return _breaker_out(await self.breaker.view(str(endpoint.id)))
        except (RedisError, OSError):
            return BreakerOut(state="unknown", consecutive_failures=None, retry_at=None)

    def _checked_url(self, url: str) -> str:
        try:
            check_url(url, allow_private=self.settings.allow_private_endpoints)
        except UnsafeURL as exc:
            raise Problem(422, "unsafe-url", str(exc)) from None
        return url

    async def page(self, cursor: str | None, limit: int) -> Page[EndpointOut]:
        rows = await self.repo.fetch(paginate(self.repo.scoped(), Endpoint.created_at, Endpoint.id, cursor, limit))
        breakers = {row.id: await self._breaker(row) for row in rows[:limit]}
        return page_of(rows, limit, "created_at", lambda row: _out(row, breakers[row.id]))

    async def create(self, data: EndpointCreate) -> tuple[Endpoint, str]:
        await self._check_room()
        endpoint = Endpoint(
            tenant_id=self.tenant_id,
            url=self._checked_url(data.url),
            description=data.description,
            event_types=_checked_event_types(data.event_types),
            rate_limit_per_second=data.rate_limit_per_second,
            enabled=data.enabled,
        )
        secret = new_endpoint_secret()
        endpoint.secrets = [EndpointSecret(ciphertext=self.box.encrypt(secret), created_at=utcnow())]
        self.session.add(endpoint)
        await self.session.commit()
        return endpoint, secret

    async def _check_room(self) -> None:
        """409 at ``max_endpoints_per_tenant``; the tenant's row lock makes concurrent creates count in turn."""
        await self.session.get_one(Tenant, self.tenant_id, with_for_update=True)
        most = self.settings.max_endpoints_per_tenant
        if await self.session.scalar(select(func.count()).select_from(self.repo.scoped().subquery())) >= most:
            raise Problem(409, "too-many-endpoints", f"a tenant may have {most} endpoints; delete one first")

    async def update(self, endpoint_id: uuid.UUID, data: EndpointUpdate) -> Endpoint:
        """A new URL, or enabling a disabled endpoint, also closes its circuit: what failed was the
        old target, and the tenant's fix should be tried at once, not after the cool-down."""
        endpoint = await self.repo.get(endpoint_id)
        fixed = (data.url is not msgspec.UNSET and data.url != endpoint.url) or (data.enabled is True and not endpoint.enabled)
        if data.url is not msgspec.UNSET:
            endpoint.url = self._checked_url(data.url)
        if data.description is not msgspec.UNSET:
            endpoint.description = data.description
        if data.event_types is not msgspec.UNSET:
            endpoint.event_types = _checked_event_types(data.event_types)
        if data.rate_limit_per_second is not msgspec.UNSET:
            endpoint.rate_limit_per_second = data.rate_limit_per_second
        if data.enabled is not msgspec.UNSET:
            endpoint.enabled = data.enabled
        await self.session.commit()
        if fixed:
            await self._reset_breaker(endpoint)
        return endpoint

    async def _reset_breaker(self, endpoint: Endpoint) -> None:
        """Best effort: with the breaker store unreachable the circuit closes after its cool-down."""
        try:
            await self.breaker.reset(str(endpoint.id))
        except (RedisError, OSError):
            _log.warning("endpoint %s: circuit not reset, breaker store unreachable", endpoint.id)

    async def delete(self, endpoint_id: uuid.UUID) -> None:
        """Soft delete: fan-out stops choosing it, its past deliveries stay readable."""
        endpoint = await self.repo.get(endpoint_id)
        endpoint.deleted_at = utcnow()
        await self.session.commit()

    async def rotate_secret(self, endpoint_id: uuid.UUID, data: SecretRotate) -> SecretOut:
        """A new secret; the previous ones keep signing through the grace period so receivers can switch.

        The row lock serialises concurrent rotations: each sees the other's secret and expires it.
        """
        endpoint = await self.repo.get(endpoint_id, for_update=True)
        grace = self.settings.secret_grace_seconds if data.grace_seconds is None else data.grace_seconds
        added = rotate(self.box, endpoint.secrets, EndpointSecret, new_endpoint_secret(), grace_seconds=grace)
        await self.session.commit()
        return added

    async def reveal(self, endpoint_id: uuid.UUID) -> list[SecretOut]:
        return revealed(self.box, (await self.repo.get(endpoint_id)).secrets)
