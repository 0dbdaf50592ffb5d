"""Everything a claim's attempts need, read for the whole claim at once.

One query joins the claimed deliveries with their events, endpoints and the endpoints' active
secrets (a row per secret: two only while a rotation's grace lasts) instead of an ORM session per
attempt; on Postgres that query is part of the claim's own statement (``LEASED``), so leasing and
reading are one round trip. Secrets are decrypted through a cache keyed by
ciphertext, which needs no invalidation: which secrets are active is read fresh every time, and a
ciphertext always decrypts to the same plaintext.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, TableClause, and_, bindparam, column, or_, select, table, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import UTCDateTime, among, utcnow
from gateway.events.models import DEAD, OPEN_STATUSES, Delivery, Event
from gateway.events.repository import unleased
from tenants.crypto import SecretBox
from tenants.endpoints.models import Endpoint, EndpointSecret

# Decrypted secrets kept per process; past this many the cache starts over (rotations leave old ones).
_CACHE_MAX = 10_000
_d, _e, _ev, _s = Delivery.__table__, Endpoint.__table__, Event.__table__, EndpointSecret.__table__
# The rows the Postgres claim leases (its ``leased`` CTE, engine.py), read there with their jobs.
LEASED = table("leased", *(column(name, _d.c[name].type) for name in ("id", "tenant_id", "endpoint_id", "event_id", "priority")))


def jobs_of(deliveries: TableClause) -> Select[Any]:
    """The job rows of ``deliveries`` (the table, or the claim's ``LEASED`` rows): each joined with
    its event, its endpoint and the endpoint's active secrets (a row per secret)."""
    d = deliveries.c
    return select(
        d.id, d.tenant_id, d.endpoint_id, d.event_id, d.priority,
        _e.c.url, _e.c.rate_limit_per_second, _e.c.enabled, _e.c.deleted_at,
        _ev.c.body, _ev.c.received_at, _ev.c.trace_context, _s.c.ciphertext, _s.c.created_at.label("secret_created_at"),
    ).select_from(
        deliveries.join(_ev, _ev.c.id == d.event_id)
        .outerjoin(_e, _e.c.id == d.endpoint_id)
        .outerjoin(_s, and_(_s.c.endpoint_id == d.endpoint_id, EndpointSecret.active_at(bindparam("now", type_=UTCDateTime()))))
    )


@functools.cache
def _read(dialect: str) -> Any:
    return jobs_of(_d).where(among(dialect, _d.c.id, "ids"), _d.c.status.in_(OPEN_STATUSES))


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
    leased_until: datetime  # the claim's lease: its outcome changes the row only while that lease holds


@dataclass(frozen=True, slots=True)
class Read:
    jobs: list[Job]
    dead: list[uuid.UUID]  # the tenant of each delivery made dead instead (its endpoint gone, disabled or unreadable)


_log = logging.getLogger("hookgate.delivery")
_UNREADABLE = "endpoint secret cannot be decrypted with HOOKGATE_SECRET_KEY (restore its old key, then redrive)"


class JobReader:
    def __init__(self, box: SecretBox) -> None:
        self._box = box
        self._plaintexts: dict[bytes, str] = {}

    async def read(self, session: AsyncSession, delivery_ids: list[uuid.UUID], leased_until: datetime) -> Read:
        """The jobs of the still-open deliveries among ``delivery_ids``, in the caller's transaction."""
        if not delivery_ids:
            return Read([], [])
        rows = await session.execute(_read(session.bind.dialect.name), {"ids": delivery_ids, "now": utcnow()})
        return await self.jobs(session, rows, leased_until)

    async def jobs(self, session: AsyncSession, rows: Iterable[Row[Any]], leased_until: datetime) -> Read:
        """The jobs of these ``jobs_of`` rows; deliveries whose endpoint is gone or disabled are made
        dead instead, and so are those none of whose secrets decrypts (``HOOKGATE_SECRET_KEY`` lost
        the key they were stored under): one such endpoint must not fail the claim of every tenant's
        deliveries beside it. A secret that does not decrypt beside one that does is left out."""
        stopped: dict[str, list[uuid.UUID]] = defaultdict(list)
        live: dict[uuid.UUID, Row[Any]] = {}
        secrets: dict[uuid.UUID, list[tuple[datetime, str]]] = defaultdict(list)
        unreadable: set[uuid.UUID] = set()
        for row in rows:
            if row.url is None or row.deleted_at is not None:
                stopped["endpoint deleted"].append(row.id)
            elif not row.enabled:
                stopped["endpoint disabled"].append(row.id)
            else:
                live.setdefault(row.id, row)
                if row.ciphertext is not None:
                    try:
                        secrets[row.id].append((row.secret_created_at, self._plaintext(row.ciphertext)))
                    except ValueError:
                        unreadable.add(row.id)
        if lost := [delivery_id for delivery_id in unreadable if not secrets[delivery_id]]:
            _log.error("%d deliveries made dead: no secret of their endpoint decrypts with HOOKGATE_SECRET_KEY", len(lost))
            stopped[_UNREADABLE].extend(lost)
            for delivery_id in lost:
                del live[delivery_id]
        dead = [tenant_id for why, ids in stopped.items() for tenant_id in await _finish_dead(session, _d.c.id.in_(set(ids)), why)]
        return Read(dead=dead, jobs=[
            Job(
                delivery_id=row.id,
                tenant_id=row.tenant_id,
                endpoint_id=row.endpoint_id,
                url=row.url,
                rate=row.rate_limit_per_second,
                secrets=_newest_first(secrets[row.id]),
                body=row.body or b"",
                priority=row.priority,
                received_at=row.received_at,
                event_id=row.event_id,
                trace_context=row.trace_context,
                leased_until=leased_until,
            )
            for row in live.values()
        ])

    def _plaintext(self, ciphertext: bytes) -> str:
        plaintext = self._plaintexts.get(ciphertext)
        if plaintext is None:
            if len(self._plaintexts) >= _CACHE_MAX:
                self._plaintexts.clear()
            plaintext = self._plaintexts[ciphertext] = self._box.decrypt(ciphertext)
        return plaintext


def _newest_first(secrets: list[tuple[datetime, str]]) -> list[str]:
    """A delivery's secrets newest first, as ``active_rows`` orders them (two only during a rotation)."""
    return [plaintext for _, plaintext in sorted(secrets, key=lambda secret: secret[0], reverse=True)]


async def finish_waiting(session: AsyncSession, endpoint_id: uuid.UUID, held: uuid.UUID, why: str) -> list[uuid.UUID]:
    """Make dead the endpoint's open deliveries no worker holds, and ``held`` (the caller's own);
    the tenant of each one this ended."""
    return await _finish_dead(session, and_(_d.c.endpoint_id == endpoint_id, or_(_d.c.id == held, unleased(utcnow()))), why)


async def _finish_dead(session: AsyncSession, which: ColumnElement[bool], why: str) -> list[uuid.UUID]:
    """Make the open deliveries ``which`` selects dead; the tenant of each one this ended."""
    now = utcnow()
    ended = await session.execute(
        update(_d)
        .where(which, _d.c.status.in_(OPEN_STATUSES))
        .values(status=DEAD, locked_until=None, next_attempt_at=None, completed_at=now, last_error=why)
        .returning(_d.c.tenant_id)
    )
    return list(ended.scalars())
