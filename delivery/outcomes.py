"""Group commit of attempt outcomes: the attempt rows and delivery updates of many concurrent
attempts are written in one transaction (``gateway.batching`` sizes the batches to the load).
Postponements (an open circuit or a rate limit: a wait that spends no attempt) are batched too.

An outcome is one attempt row plus its delivery's new state, in the same transaction: a delivery
is never finished without its attempt row. The batch locks its deliveries ``FOR UPDATE`` in id
order, so two batches cannot deadlock on each other. If a batch fails, each of its outcomes is
written alone, so one bad outcome fails only its own caller. A batch whose commit reached the
database but whose acknowledgement was lost is then written again: each outcome carries the id of
its attempt row, and one already on record is not written twice. A delivery whose outcome could
not be written keeps its open state and lease: when the lease runs out it is claimed and tried again.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import operational
from delivery.schedule import next_delay
from delivery.sender import SendResult
from gateway.batching import Batcher
from gateway.database import among, new_id, utcnow
from gateway.events.models import DEAD, FAILED, OPEN_STATUSES, SUCCEEDED, Attempt, Delivery, Event
from gateway.metrics import ATTEMPT_BATCH_ROWS
from gateway.settings import Settings

_d, _a = Delivery.__table__, Attempt.__table__
# What an outcome may change on its delivery row; written back whole, one executemany per batch.
_STATE = ("status", "attempt_count", "locked_until", "next_attempt_at", "completed_at",
          "last_status_code", "last_error", "last_attempt_at")
_LOCK = (
    select(_d.c.id, _d.c.tenant_id, _d.c.event_id, _d.c.retry_offset, _d.c.is_replay, *(_d.c[name] for name in _STATE))
    .order_by(_d.c.id)
    .with_for_update()
)


@functools.cache
def _lock(dialect: str) -> Any:
    return _LOCK.where(among(dialect, _d.c.id, "ids"))


_UPDATE = (
    update(_d)
    .where(_d.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}", type_=_d.c[name].type) for name in _STATE})
)
_INSERT = insert(_a)
_POSTPONE = (  # only while the job's lease holds: a lease that ran out may be another claim's now
    update(_d)
    .where(
        _d.c.id == bindparam("b_id"),
        or_(*(_d.c.status == status for status in OPEN_STATUSES)),  # no IN: executemany
        _d.c.locked_until == bindparam("b_lease", type_=_d.c.locked_until.type),
    )
    .values(next_attempt_at=bindparam("b_until", type_=_d.c.next_attempt_at.type), locked_until=None)
)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery_id: uuid.UUID
    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID
    started: datetime
    result: SendResult
    transition: str | None  # the breaker's, to announce
    trace_id: str | None
    leased_until: datetime  # the lease the job was claimed under
    attempt_id: uuid.UUID = field(default_factory=new_id)  # its row's: written once, even if its batch is retried


@dataclass(frozen=True, slots=True)
class Written:
    """The delivery's status after the outcome (None: the delivery is gone), and whether this
    outcome finished it (for the metrics) and it was live traffic (for the lag)."""

    status: str | None
    finished: bool = False
    live: bool = False


_GONE = Written(None)


class OutcomeWriter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings, *, max_items: int, concurrency: int) -> None:
        self._sessions = sessions
        self._settings = settings
        self._batcher: Batcher[Outcome, Written | Exception] = Batcher(self._commit, max_items=max_items, concurrency=concurrency)

    async def write(self, outcome: Outcome) -> Written:
        """Returns once the outcome is committed; raises if it could not be."""
        written = await self._batcher.submit(outcome)
        if isinstance(written, Exception):
            raise written
        return written

    async def _commit(self, outcomes: list[Outcome]) -> list[Written | Exception]:
        ATTEMPT_BATCH_ROWS.observe(len(outcomes))
        try:
            return list(await self._transaction(outcomes))
        except Exception:  # noqa: BLE001 - one bad outcome must not fail the others: write each alone
            if len(outcomes) == 1:
                raise
        return [await self._alone(outcome) for outcome in outcomes]

    async def _alone(self, outcome: Outcome) -> Written | Exception:
        try:
            [written] = await self._transaction([outcome], retried=True)
        except Exception as exc:  # noqa: BLE001 - handed to this outcome's caller
            return exc
        return written

    async def _transaction(self, outcomes: list[Outcome], *, retried: bool = False) -> list[Written]:
        async with self._sessions() as session, session.begin():
            return await self._write(session, outcomes, retried=retried)

    async def _write(self, session: AsyncSession, outcomes: list[Outcome], *, retried: bool = False) -> list[Written]:
        connection = await session.connection()
        ids = sorted({outcome.delivery_id for outcome in outcomes})
        locked = await connection.execute(_lock(connection.dialect.name), {"ids": ids})
        names = list(locked.keys())
        rows = {row.id: dict(zip(names, row, strict=True)) for row in locked}  # a quarter of dict(row._mapping)
        on_record = await _on_record(connection, outcomes) if retried else {}
        attempts: list[dict[str, Any]] = []
        dead: list[tuple[Outcome, dict[str, Any]]] = []
        gone: list[Outcome] = []
        written = []
        for outcome in outcomes:
            row = rows.get(outcome.delivery_id)
            if row is None:  # purged meanwhile
                written.append(_GONE)
                continue
            if outcome.attempt_id in on_record:  # its batch's commit got through, the acknowledgement did not
                written.append(_as_recorded(row, on_record[outcome.attempt_id]))
                continue
            was_open = row["status"] in OPEN_STATUSES
            row["attempt_count"] += 1
            attempts.append(_attempt_row(outcome, row["attempt_count"]))
            if was_open and not outcome.result.ok and not _holds(row, outcome):
                # Its lease ran out and another claim holds the row now: that claim's attempt decides
                # the schedule and the lease; this one is only on record.
                _note(row, outcome)
            elif was_open:  # a duplicate after a lease expiry leaves a finished row as is
                self._advance(row, outcome)
                if row["status"] == DEAD:
                    dead.append((outcome, dict(row)))
                    if outcome.result.status_code == 410:
                        gone.append(outcome)
            finished = was_open and row["status"] in (SUCCEEDED, DEAD)
            written.append(Written(row["status"], finished, not row["is_replay"] and not row["retry_offset"]))
        if attempts:
            await connection.execute(_INSERT, attempts)
            touched = sorted({attempt["delivery_id"] for attempt in attempts})
            await connection.execute(_UPDATE, [_update_params(rows[delivery_id]) for delivery_id in touched])
        await _announce(session, gone, dead, [outcome for outcome in outcomes if outcome.attempt_id not in on_record])
        return written

    def _advance(self, row: dict[str, Any], outcome: Outcome) -> None:
        result = outcome.result
        _note(row, outcome)
        if result.ok:
            _finish(row, SUCCEEDED, None)
        elif result.status_code == 410:
            _finish(row, DEAD, "endpoint answered 410 Gone: it was disabled")
        else:
            settings = self._settings
            delay = next_delay(
                row["attempt_count"] - row["retry_offset"],
                settings.retry_delays,
                retry_after=result.retry_after,
                max_retry_after=settings.retry_after_max_seconds,
            )
            if delay is None:
                _finish(row, DEAD, result.error)
            else:
                row["status"], row["locked_until"] = FAILED, None
                row["next_attempt_at"] = utcnow() + timedelta(seconds=delay)


class Postponements:
    """Deliveries told to wait, released from their leases together (one executemany per batch).

    A batch that fails leaves its deliveries leased: they come back when the lease runs out.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, max_items: int, concurrency: int) -> None:
        self._sessions = sessions
        self._batcher: Batcher[tuple[uuid.UUID, datetime, datetime], None] = Batcher(self._commit, max_items=max_items, concurrency=concurrency)

    async def postpone(self, delivery_id: uuid.UUID, until: datetime, leased_until: datetime) -> None:
        """Due again at ``until``, released from the lease it was claimed under (if that still holds)."""
        await self._batcher.submit((delivery_id, until, leased_until))

    async def _commit(self, waits: list[tuple[uuid.UUID, datetime, datetime]]) -> list[None]:
        async with self._sessions() as session, session.begin():
            connection = await session.connection()
            params = [{"b_id": delivery_id, "b_until": until, "b_lease": lease} for delivery_id, until, lease in sorted(waits)]
            await connection.execute(_POSTPONE, params)
        return [None] * len(waits)


async def _announce(
    session: AsyncSession, gone: list[Outcome], dead: list[tuple[Outcome, dict[str, Any]]], outcomes: list[Outcome]
) -> None:
    """Disable endpoints that answered 410 and emit the operational events, in the batch's transaction."""
    for outcome in sorted(gone, key=lambda o: o.endpoint_id):  # another 410 of this endpoint may have announced it already
        await operational.disable_endpoint(session, outcome.tenant_id, outcome.endpoint_id, "410 Gone")
    notices = await _dead_notices(session, [row["event_id"] for _, row in dead]) if dead else set()
    for outcome, row in dead:
        if row["event_id"] in notices:
            continue  # a notice about a dead notice would go to the other subscribers, and so on without end
        await operational.emit(
            session, outcome.tenant_id, operational.DELIVERY_DEAD,
            {"delivery_id": str(outcome.delivery_id), "event_id": str(row["event_id"]), "endpoint_id": str(outcome.endpoint_id),
             "attempts": row["attempt_count"], "last_error": row["last_error"]},
            exclude=outcome.endpoint_id,
        )
    for outcome in outcomes:
        if outcome.transition is not None:
            kind = operational.CIRCUIT_OPENED if outcome.transition == "opened" else operational.CIRCUIT_CLOSED
            await operational.emit(session, outcome.tenant_id, kind, {"endpoint_id": str(outcome.endpoint_id)}, exclude=outcome.endpoint_id)


async def _dead_notices(session: AsyncSession, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``event_ids`` that are Hookgate's own ``delivery.dead`` notices (no source)."""
    found = await session.scalars(
        select(Event.id).where(Event.id.in_(event_ids), Event.source_id.is_(None), Event.type == operational.DELIVERY_DEAD)
    )
    return set(found)


async def _on_record(connection: Any, outcomes: list[Outcome]) -> dict[uuid.UUID, int]:
    """The numbers of those of the outcomes' attempt rows already written, by attempt id."""
    ids = [outcome.attempt_id for outcome in outcomes]
    found = await connection.execute(select(_a.c.id, _a.c.number).where(among(connection.dialect.name, _a.c.id, "ids")), {"ids": ids})
    return {attempt_id: number for attempt_id, number in found}


def _as_recorded(row: dict[str, Any], number: int) -> Written:
    """What the commit that wrote attempt ``number`` made of its delivery, as far as the row still shows."""
    finished = row["status"] in (SUCCEEDED, DEAD) and row["attempt_count"] == number
    return Written(row["status"], finished, not row["is_replay"] and not row["retry_offset"])


def _attempt_row(outcome: Outcome, number: int) -> dict[str, Any]:
    result = outcome.result
    return {
        "id": outcome.attempt_id,
        "tenant_id": outcome.tenant_id,
        "delivery_id": outcome.delivery_id,
        "number": number,
        "started_at": outcome.started,
        "duration_ms": result.duration_ms,
        "status_code": result.status_code,
        "error": result.error,
        "response_excerpt": result.response_excerpt or None,
        "trace_id": outcome.trace_id,
    }


def _holds(row: dict[str, Any], outcome: Outcome) -> bool:
    """Whether the lease the outcome's job was claimed under still holds the row."""
    return row["locked_until"] == outcome.leased_until


def _note(row: dict[str, Any], outcome: Outcome) -> None:
    result = outcome.result
    row["last_status_code"], row["last_error"], row["last_attempt_at"] = result.status_code, result.error, outcome.started


def _update_params(row: dict[str, Any]) -> dict[str, Any]:
    return {"b_id": row["id"], **{f"b_{name}": row[name] for name in _STATE}}


def _finish(row: dict[str, Any], status: str, error: str | None) -> None:
    row["status"], row["locked_until"], row["next_attempt_at"] = status, None, None
    row["completed_at"] = utcnow()
    if error is not None:
        row["last_error"] = error
