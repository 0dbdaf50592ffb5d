"""Everything a claim's attempts need, read for the whole claim at once.

One query joins the claimed deliveries with their events, endpoints and the endpoints' active
secrets (a row per secret: two only while a rotation's grace lasts): one round trip per claim
instead of an ORM session per attempt. Secrets are decrypted through a cache keyed by
ciphertext, which needs no invalidation: which secrets are active is read fresh every time, and a
ciphertext always decrypts to the same plaintext.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import UTCDateTime, among, utcnow
from gateway.events.models import DEAD, OPEN_STATUSES, Delivery, Event
from tenants.crypto import SecretBox
from tenants.endpoints.models import Endpoint, EndpointSecret

# Decrypted secrets kept per process; past this many the cache starts over (rotations leave old ones).
_CACHE_MAX = 10_000
_d, _e, _ev, _s = Delivery.__table__, Endpoint.__table__, Event.__table__, EndpointSecret.__table__
_READ = (
    select(
        _d.c.id, _d.c.tenant_id, _d.c.endpoint_id, _d.c.event_id, _d.c.priority,
        _e.c.url, _e.c.rate_limit_per_second, _e.c.enabled, _e.c.deleted_at,
        _ev.c.body, _ev.c.received_at, _ev.c.trace_context, _s.c.ciphertext,
    )
    .select_from(
        _d.join(_ev, _ev.c.id == _d.c.event_id)
        .outerjoin(_e, _e.c.id == _d.c.endpoint_id)
        .outerjoin(_s, and_(_s.c.endpoint_id == _d.c.endpoint_id, EndpointSecret.active_at(bindparam("now", type_=UTCDateTime()))))
    )
    .order_by(_s.c.created_at.desc())  # each delivery's secrets newest first, as active_rows orders them
)


@functools.cache
def _read(dialect: str) -> Any:
    return _READ.where(among(dialect, _d.c.id, "ids"), _d.c.status.in_(OPEN_STATUSES))


@dataclass(frozen=True, slots=True)
class Job:
    """What one attempt needs, read before the request so no connection is held during it."""

    delivery_id: uuid.UUID
    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    rate: float | None
    secrets: list[str] = field(repr=False)  # plaintext: never in a log line or traceback
    body: bytes
    priority: str
    received_at: datetime
    event_id: uuid.UUID
    trace_context: str | None


class JobReader:
    def __init__(self, box: SecretBox) -> None:
        self._box = box
        self._plaintexts: dict[bytes, str] = {}

    async def read(self, session: AsyncSession, delivery_ids: list[uuid.UUID]) -> list[Job]:
        """The jobs of the still-open deliveries among ``delivery_ids``, in the caller's transaction.

        Deliveries whose endpoint is gone or disabled are made dead here instead.
        """
        if not delivery_ids:
            return []
        stopped: dict[str, list[uuid.UUID]] = defaultdict(list)
        live: dict[uuid.UUID, Row[Any]] = {}
        secrets: dict[uuid.UUID, list[str]] = defaultdict(list)
        for row in await session.execute(_read(session.bind.dialect.name), {"ids": delivery_ids, "now": utcnow()}):
            if row.url is None or row.deleted_at is not None:
                stopped["endpoint deleted"].append(row.id)
            elif not row.enabled:
                stopped["endpoint disabled"].append(row.id)
            else:
                live.setdefault(row.id, row)
                if row.ciphertext is not None:
                    secrets[row.id].append(self._plaintext(row.ciphertext))
        for why, ids in stopped.items():
            await _finish_dead(session, list(dict.fromkeys(ids)), why)
        return [
            Job(
                delivery_id=row.id,
                tenant_id=row.tenant_id,
                endpoint_id=row.endpoint_id,
                url=row.url,
                rate=row.rate_limit_per_second,
                secrets=secrets[row.id],
                body=row.body or b"",
                priority=row.priority,
                received_at=row.received_at,
                event_id=row.event_id,
                trace_context=row.trace_context,
            )
            for row in live.values()
        ]

    def _plaintext(self, ciphertext: bytes) -> str:
        plaintext = self._plaintexts.get(ciphertext)
        if plaintext is None:
            if len(self._plaintexts) >= _CACHE_MAX:
                self._plaintexts.clear()
            plaintext = self._plaintexts[ciphertext] = self._box.decrypt(ciphertext)
        return plaintext


async def _finish_dead(session: AsyncSession, delivery_ids: list[uuid.UUID], why: str) -> None:
    now = utcnow()
    await session.execute(
        update(_d)
        .where(_d.c.id.in_(delivery_ids), _d.c.status.in_(OPEN_STATUSES))
        .values(status=DEAD, locked_until=None, next_attempt_at=None, completed_at=now, last_error=why)
    )
