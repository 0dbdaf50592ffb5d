"""Ingest-side source lookup: an in-process TTL cache of token → source and decrypted secrets.

Misses are cached too, so a flood of unknown tokens costs one query per token per TTL; the
requests that miss one token together share one query, so an expiry under load is no stampede. A cached
source whose signature check fails is reloaded (at most once a second) so that a freshly added
secret works at once in every process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.database import utcnow
from tenants.crypto import SecretBox
from tenants.models import Tenant
from tenants.secrets import active_rows
from tenants.sources.models import Source

_MAX_ENTRIES = 10_000
_RELOAD_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class SourceKey:
    id: uuid.UUID
    tenant_id: uuid.UUID
    provider: str
    priorities: Mapping[str, str] | None
    limits: Mapping[str, Mapping[str, Any]] | None  # the tenant's admission overrides
    secrets: tuple[tuple[str, datetime | None], ...] = field(repr=False)  # (plaintext, expires_at), newest first: never in a log line

    def active_secrets(self, now: datetime) -> list[str]:
        return [secret for secret, expires in self.secrets if expires is None or expires > now]


@dataclass(slots=True)
class _Entry:
    key: SourceKey | None
    loaded: float


class SourceDirectory:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], box: SecretBox, ttl: float) -> None:
        self._sessions = sessions
        self._box = box
        self._ttl = ttl
        self._cache: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[_Entry]] = {}

    async def find(self, token: str) -> SourceKey | None:
        entry = self._cache.get(token)
        now = time.monotonic()
        if entry is None or now - entry.loaded >= self._ttl:
            entry = await self._load_once(token, now)
        return entry.key

    def forget(self, token: str) -> None:
        """Drop a changed source here; other processes see the change within the TTL."""
        self._cache.pop(token, None)
        self._loading.pop(token, None)

    async def reload_if_stale(self, token: str) -> SourceKey | None:
        """A fresher copy when the cached one is older than a second, else None."""
        entry = self._cache.get(token)
        now = time.monotonic()
        if entry is None or now - entry.loaded < _RELOAD_AFTER:
            return None
        return (await self._load_once(token, now)).key

    async def _load_once(self, token: str, now: float) -> _Entry:
        loading = self._loading.get(token)
        if loading is None:
            loading = self._loading[token] = asyncio.ensure_future(self._load(token, now))
            loading.add_done_callback(lambda _: self._loading.pop(token, None))
        return await asyncio.shield(loading)  # a waiter that goes away does not cancel the others' query

    async def _load(self, token: str, now: float) -> _Entry:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Source, Tenant.limits)
                    .join(Tenant, Tenant.id == Source.tenant_id)
                    .where(Source.ingest_token == token, Source.deleted_at.is_(None))
                )
            ).first()
            key = self._key(*row) if row is not None else None
        if len(self._cache) >= _MAX_ENTRIES:
            # Misses go first: anyone can make them (a request to a made-up ingest URL), and flushing
            # every source with them would make each tenant's next ingest reload and decrypt its own.
            self._cache = {cached: entry for cached, entry in self._cache.items() if entry.key is not None}
            if len(self._cache) >= _MAX_ENTRIES:
                self._cache.clear()
        entry = self._cache[token] = _Entry(key, now)
        return entry

    def _key(self, source: Source, limits: Mapping[str, Mapping[str, Any]] | None) -> SourceKey:
        rows = active_rows(source.secrets, utcnow())
        return SourceKey(
            id=source.id,
            tenant_id=source.tenant_id,
            provider=source.provider,
            priorities=source.priorities,
            limits=limits,
            secrets=tuple((self._box.decrypt(s.ciphertext), s.expires_at) for s in rows),
        )
