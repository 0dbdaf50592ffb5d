"""The ingest hot path: verify, parse, classify, admit, store once.

No 2xx leaves before the event row is committed; a storage failure is a 503 so the
provider retries, and nothing is half-written because the event is one INSERT.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.admission.service import Admission
from gateway.database import utcnow
from gateway.events.models import Event
from gateway.events.priority import Priority, classify
from gateway.events.store import event_row, insert_once
from gateway.ingest import providers
from gateway.limiter import Rate
from gateway.problems import Problem
from tenants.limits import rate_for
from tenants.sources.directory import SourceDirectory, SourceKey

_log = logging.getLogger("hookgate.ingest")
_json = msgspec.json.Decoder()
_STORAGE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Accepted:
    id: uuid.UUID
    duplicate: bool


class IngestService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        directory: SourceDirectory,
        admission: Admission,
        *,
        defaults: Mapping[Priority, Rate],
        tolerance: int,
    ) -> None:
        self._sessions = sessions
        self._directory = directory
        self._admission = admission
        self._defaults = defaults
        self._tolerance = tolerance
        self._dialect = sessions.kw["bind"].dialect.name

    async def ingest(self, token: str, body: bytes, headers: Mapping[str, str]) -> Accepted:
        try:
            source = await self._directory.find(token)
        except _STORAGE_ERRORS:
            raise _unavailable() from None
        if source is None:
            raise Problem(404, "unknown-source", "no source has this ingest token")
        await self._verify(token, source, body, headers)
        payload = _parse(body)
        identity = providers.identify(source.provider, body, payload, headers)
        priority = classify(identity.type, source.priorities)  # type: ignore[arg-type]
        await self._admission.admit(source.tenant_id, priority, rate_for(priority, source.limits, self._defaults))
        return await self._store(source, body, headers, identity, priority)

    async def _verify(self, token: str, source: SourceKey, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            providers.verify(source.provider, body, headers, source.active_secrets(utcnow()), tolerance=self._tolerance)
        except providers.SignatureError as exc:
            fresher = await self._directory.reload_if_stale(token)
            if fresher is None or fresher.secrets == source.secrets:
                raise Problem(400, "invalid-signature", exc.message, reason=exc.reason) from None
            await self._verify(token, fresher, body, headers)

    async def _store(
        self, source: SourceKey, body: bytes, headers: Mapping[str, str], identity: providers.Identity, priority: Priority
    ) -> Accepted:
        values = event_row(
            source.tenant_id,
            source.id,
            external_id=identity.external_id,
            type=identity.type,
            created_at=identity.created_at,
            priority=priority,
            body=body,
            headers=providers.kept_headers(source.provider, headers),
        )
        statement = insert_once(self._dialect, [values])
        try:
            async with self._sessions() as session, session.begin():
                stored = await session.scalar(statement)
                if stored is None:
                    existing = await session.scalar(
                        select(Event.id).where(
                            Event.tenant_id == source.tenant_id,
                            Event.source_id == source.id,
                            Event.external_id == values["external_id"],
                        )
                    )
                    return Accepted(existing, duplicate=True)  # type: ignore[arg-type]
        except _STORAGE_ERRORS:
            _log.warning("event not stored: storage unavailable", exc_info=True)
            raise _unavailable() from None
        return Accepted(stored, duplicate=False)


def _parse(body: bytes) -> dict[str, object]:
    try:
        payload = _json.decode(body)
    except msgspec.DecodeError as exc:
        raise Problem(400, "invalid-json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Problem(400, "invalid-json", "the body must be a JSON object")
    return payload


def _unavailable() -> Problem:
    return Problem(503, "storage-unavailable", "the event could not be stored; retry later", headers={"Retry-After": "5"})


