"""Bulk-made delivery backlogs: thousands of due deliveries written straight to the database,
as a tenant's flood would leave them after fan-out (used by fairness tests and the bench)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import func, insert, select

from gateway.database import create_engine, new_id, utcnow
from gateway.events.models import OPEN_STATUSES, Delivery, Event

_CHUNK = 1000
BACKLOG_PREFIX = "evt_backlog_"  # the external ids of add_backlog's events


async def add_backlog(database_url: str, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, count: int, priority: str = "critical") -> None:
    """``count`` fanned-out ``charge.succeeded`` events of this tenant, each with a due delivery."""
    engine = create_engine(database_url, pool_size=1)
    now = utcnow()
    try:
        for start in range(0, count, _CHUNK):
            events, deliveries = [], []
            for _ in range(min(_CHUNK, count - start)):
                event_id, external = new_id(), f"{BACKLOG_PREFIX}{uuid.uuid4().hex}"
                body = json.dumps({"id": external, "type": "charge.succeeded", "data": {"object": {"amount": 100}}})
                events.append(
                    {"id": event_id, "tenant_id": tenant_id, "external_id": external, "type": "charge.succeeded",
                     "priority": priority, "body": body.encode(), "headers": {}, "received_at": now, "fanned_out_at": now}
                )
                deliveries.append(
                    {"id": new_id(), "tenant_id": tenant_id, "event_id": event_id, "endpoint_id": endpoint_id,
                     "priority": priority, "next_attempt_at": now, "created_at": now}
                )
            async with engine.begin() as connection:
                await connection.execute(insert(Event), events)
                await connection.execute(insert(Delivery), deliveries)
    finally:
        await engine.dispose()


# Delivered traffic made in one statement: each event with its succeeded delivery and its attempt.
_HISTORY = """
WITH made AS (
  INSERT INTO events (id, tenant_id, source_id, external_id, type, priority, body, headers, provider_created_at, received_at, fanned_out_at)
  SELECT gen_random_uuid(), $1, $2, 'evt_history_' || n, 'charge.succeeded', 'normal', $4, '{}', at, at, at
  FROM generate_series($5::int + 1, $5::int + $6::int) AS n, LATERAL (SELECT now() - make_interval(secs => n) AS at) AS t
  RETURNING id, received_at
), delivered AS (
  INSERT INTO deliveries (id, tenant_id, event_id, endpoint_id, priority, is_replay, status, attempt_count, retry_offset,
                          next_attempt_at, last_status_code, last_attempt_at, completed_at, created_at)
  SELECT gen_random_uuid(), $1, id, $3, 'normal', false, 'succeeded', 1, 0, NULL, 200, received_at, received_at, received_at FROM made
  RETURNING id, created_at
)
INSERT INTO attempts (id, tenant_id, delivery_id, number, started_at, duration_ms, status_code)
SELECT gen_random_uuid(), $1, id, 1, created_at, 5, 200 FROM delivered
"""


async def add_history(
    database_url: str, tenant_id: uuid.UUID, source_id: uuid.UUID, endpoint_id: uuid.UUID, count: int, body: bytes
) -> None:
    """``count`` events received over the last ``count`` seconds, each delivered once: the tables a
    live gateway has, then ANALYZE, the statistics autovacuum would have gathered, and a CHECKPOINT,
    so that writing them out does not compete with what is measured next. Postgres only (superuser)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            async with raw.transaction():
                for start in range(0, count, _CHUNK * 10):
                    await raw.execute(_HISTORY, tenant_id, source_id, endpoint_id, body, start, min(_CHUNK * 10, count - start))
            await raw.execute("ANALYZE")
            await raw.execute("CHECKPOINT")
    finally:
        await engine.dispose()


async def open_deliveries(database_url: str, tenant_id: uuid.UUID) -> int:
    """How many of the tenant's deliveries are still pending or retrying."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            statement = select(func.count()).where(Delivery.tenant_id == tenant_id, Delivery.status.in_(OPEN_STATUSES))
            return int((await connection.execute(statement)).scalar_one())
    finally:
        await engine.dispose()


async def add_events(
    database_url: str, tenant_id: uuid.UUID, source_id: uuid.UUID, received: list[tuple[str, datetime]]
) -> list[tuple[str, str, datetime]]:
    """Stored, fanned-out events of the given (type, received_at), without deliveries: yesterday's
    traffic, already delivered, ready to be replayed. Returns (external id, type, received_at)."""
    engine = create_engine(database_url, pool_size=1)
    made = []
    try:
        for start in range(0, len(received), _CHUNK):
            rows = []
            for event_type, at in received[start : start + _CHUNK]:
                external = f"evt_{uuid.uuid4().hex[:24]}"
                body = json.dumps({"id": external, "object": "event", "type": event_type, "data": {"object": {}}})
                rows.append(
                    {"id": new_id(), "tenant_id": tenant_id, "source_id": source_id, "external_id": external,
                     "type": event_type, "priority": "normal", "body": body.encode(), "headers": {},
                     "received_at": at, "fanned_out_at": at}
                )
                made.append((external, event_type, at))
            async with engine.begin() as connection:
                await connection.execute(insert(Event), rows)
    finally:
        await engine.dispose()
    return made
