"""API keys: random, shown once, stored as a prefix and a SHA-256 digest, scoped to one tenant.

SHA-256 (not a slow hash) is right for 256-bit random keys: there is nothing to brute-force.
The lookup is by a non-secret prefix; the digest comparison is constant-time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.problems import Problem
from gateway.settings import Settings
from tenants.crypto import new_token, same, sha256_hex
from tenants.models import ApiKey

_KEY_PREFIX = "hgk_"
_LOOKUP_CHARS = 12


def issue_api_key(tenant_id: uuid.UUID, name: str = "default") -> tuple[ApiKey, str]:
    """A new key row and the plaintext key (returned once, never stored)."""
    plaintext = _KEY_PREFIX + new_token(32)
    row = ApiKey(tenant_id=tenant_id, name=name, prefix=_lookup(plaintext), key_hash=sha256_hex(plaintext))
    return row, plaintext


def _lookup(key: str) -> str:
    return key[len(_KEY_PREFIX) : len(_KEY_PREFIX) + _LOOKUP_CHARS]


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header's value, else None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _bearer(connection: ASGIConnection) -> str:  # type: ignore[type-arg]
    token = bearer_token(connection.headers.get("authorization", ""))
    if token is None:
        raise Problem(
            401,
            "unauthorized",
            "send the API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


async def authenticate_tenant(request: ASGIConnection, db_session: AsyncSession) -> uuid.UUID:  # type: ignore[type-arg]
    """Dependency: the tenant whose key authorised this request, or 401."""
    row = await active_key(db_session, _bearer(request))
    if row is None:
        raise Problem(401, "unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
    return row.tenant_id


async def active_key(session: AsyncSession, key: str) -> ApiKey | None:
    """The unrevoked key row whose plaintext is ``key``, else None."""
    if not key.startswith(_KEY_PREFIX):
        return None
    digest = sha256_hex(key)
    rows = await session.scalars(select(ApiKey).where(ApiKey.prefix == _lookup(key), ApiKey.revoked_at.is_(None)))
    return next((row for row in rows if same(row.key_hash, digest)), None)


def require_operator(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Guard: 401 unless the request carries the operator key."""
    key = _bearer(connection)
    settings: Settings = connection.app.state.settings
    if not settings.operator_key or not same(key, settings.operator_key):
        raise Problem(401, "unauthorized", "this route needs the operator key", headers={"WWW-Authenticate": "Bearer"})


def tenant_scoped(name: str, factory: Callable[[AsyncSession, uuid.UUID], Any]) -> dict[str, Provide]:
    """A tenant API controller's dependencies: the authenticated tenant, and ``name``, built by
    ``factory`` (a repository or service class) for that tenant and the request's session."""

    def provide(db_session: AsyncSession, tenant_id: uuid.UUID) -> Any:
        return factory(db_session, tenant_id)

    return {"tenant_id": Provide(authenticate_tenant), name: Provide(provide, sync_to_thread=False)}
