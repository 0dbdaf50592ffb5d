"""Group commit: concurrent ingests share one commit.

A commit costs one WAL flush whatever it holds, so one ``INSERT … ON CONFLICT DO NOTHING`` of
many events commits them all for the price of one. The batches adapt to the load
(``gateway.batching``): an idle gateway commits each event at once, a busy one many together.

Each caller learns its outcome only once its batch has committed (no 2xx before the commit). A
batch is that one statement, run in autocommit (a statement is atomic on its own, and an explicit
``BEGIN``/``COMMIT`` would add two round trips): if it fails, every caller in it gets the error and
none of its events is stored. Each commit slot keeps its connection between batches (a pool
checkout per batch cost more client CPU than the statement) and does not ping it first (a round
trip per commit); a batch that meets a dead connection (the database restarted) drops every kept
connection and is run once more on a new one. That retry is safe even if the first attempt did
commit before the connection died: the rows keep their ids, so the second attempt finds them
stored with those same ids and reports them as new, not as duplicates. Once a batch has
committed, its new events ring the doorbell together: one ring per batch, in a task of its own
beside the answers, never before the commit. Two rows with the same (tenant, source, external id)
in one batch are stored once; the later caller gets the earlier one's id as a duplicate, as if
they had come one after the other. The duplicate tally that follows is a count for the anomaly
detector: a failure to count never changes an answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.batching import Batcher
from gateway.database import STORAGE_ERRORS, dialect_insert, utcnow
from gateway.doorbell import Doorbell, ring_safely
from gateway.events.models import Event
from gateway.ingest.tallies import DUPLICATES, bump
from gateway.metrics import INGEST_BATCH_ROWS
from gateway.tracing import start_spans

_log = logging.getLogger("hookgate.ingest")
_RING_GRACE_SECONDS = 2.0
_events = Event.__table__
_KEY = (_events.c.tenant_id, _events.c.source_id, _events.c.external_id)
Key = tuple[uuid.UUID, uuid.UUID, str]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stored:
    id: uuid.UUID
    duplicate: bool


class GroupCommit:
    def __init__(self, engine: AsyncEngine, doorbell: Doorbell, *, max_rows: int, concurrency: int) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._doorbell = doorbell
        self._rings: set[asyncio.Task[None]] = set()  # strong references until each ring is done
        self._idle: list[AsyncConnection] = []  # kept between batches, at most one per commit slot
        self._dialect = engine.dialect.name
        self._batcher = Batcher(self._commit, max_items=max_rows, concurrency=concurrency)
        # One statement, compiled once: the rows are parameters (insertmanyvalues batches them).
        self._insert = (
            dialect_insert(self._dialect)(_events)
            .on_conflict_do_nothing(index_elements=[column.name for column in _KEY])
            .returning(_events.c.id, *_KEY)
        )

    async def store(self, row: Row) -> Stored:
        """Store one event row (as ``event_row`` builds it) once; returns after the commit."""
        return await self._batcher.submit(row)

    async def _commit(self, rows: list[Row]) -> list[Stored]:
        """One statement: if it fails, the error reaches every caller and nothing is stored."""
        INGEST_BATCH_ROWS.observe(len(rows))
        try:
            outcomes = await self._attempt(rows)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            await self.aclose()  # the others were opened before the same outage
            outcomes = await self._attempt(rows)
        if new := [row for row, stored in zip(rows, outcomes, strict=True) if not stored.duplicate]:
            ring = asyncio.create_task(_ring(self._doorbell, new))
            self._rings.add(ring)
            ring.add_done_callback(self._rings.discard)
        return outcomes

    async def aclose(self) -> None:
        """Return the kept connections to their pool (before it is disposed)."""
        while self._idle:
            await self._idle.pop().close()

    async def shutdown(self) -> None:
        """At the process's stop: the last batches' rings are let out (bounded: a ring that cannot go
        leaves its events to the sweeper), then the connections go back to their pool."""
        if self._rings:
            await asyncio.wait(self._rings, timeout=_RING_GRACE_SECONDS)
        await self.aclose()

    async def _attempt(self, rows: list[Row]) -> list[Stored]:
        connection = self._idle.pop() if self._idle else await self._engine.connect()
        try:
            outcomes = await self._write(connection, rows)
        except BaseException:
            await connection.close()  # not kept: whatever failed, the next batch starts on a fresh one
            raise
        self._idle.append(connection)
        return outcomes

    async def _write(self, connection: AsyncConnection, rows: list[Row]) -> list[Stored]:
        """Insert the batch's first row per key; look up the keys that were already stored."""
        first: dict[Key, Row] = {}
        for row in rows:
            first.setdefault(_key(row), row)
        ids = _ids(await connection.execute(self._insert, list(first.values())))
        if missing := [key for key in first if key not in ids]:
            ids |= _ids(await connection.execute(select(_events.c.id, *_KEY).where(tuple_(*_KEY).in_(missing))))
        outcomes = [Stored(ids[_key(row)], duplicate=ids[_key(row)] != row["id"]) for row in rows]
        duplicates = Counter(row["tenant_id"] for row, outcome in zip(rows, outcomes, strict=True) if outcome.duplicate)
        if duplicates:
            await self._tally_duplicates(connection, duplicates)
        return outcomes

    async def _tally_duplicates(self, connection: AsyncConnection, duplicates: Counter[uuid.UUID]) -> None:
        now = utcnow()
        try:
            for tenant_id, count in duplicates.items():
                await connection.execute(bump(self._dialect, tenant_id, DUPLICATES, now, count))
        except STORAGE_ERRORS:
            _log.warning("duplicates not tallied: storage unavailable", exc_info=True)


async def _ring(doorbell: Doorbell, rows: list[Row]) -> None:
    """The batch's one ring; each event's trace still ends with its own ``enqueue`` span."""
    spans = start_spans("enqueue", [row["trace_context"] for row in rows])
    try:
        await ring_safely(doorbell, [row["id"] for row in rows])
    finally:
        for span in spans:
            span.end()


def _key(row: Row) -> Key:
    return row["tenant_id"], row["source_id"], row["external_id"]


def _ids(result: Any) -> dict[Key, uuid.UUID]:
    return {(r.tenant_id, r.source_id, r.external_id): r.id for r in result}
