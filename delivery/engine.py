"""Delivery attempts: claim due rows under a lease, send once, record the outcome as data.

A claim sets ``locked_until``; a worker that dies mid-request simply lets the lease run out and
another claims the row again (at-least-once). Nothing about the schedule lives in the queue.
The database connection is not held while the HTTP request is in flight.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from redis.exceptions import RedisError
from sqlalchemy import case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import operational
from delivery.breaker import Breaker
from delivery.fanout import fan_out
from delivery.schedule import next_delay
from delivery.sender import SendResult, send
from delivery.signing import webhook_headers
from gateway.database import utcnow
from gateway.events.models import DEAD, FAILED, OPEN_STATUSES, SUCCEEDED, Attempt, Delivery, Event
from gateway.limiter import Limiter, Rate
from gateway.settings import Settings
from tenants.crypto import SecretBox
from tenants.endpoints.models import Endpoint
from tenants.secrets import active_plaintexts

_log = logging.getLogger("hookgate.delivery")
_RANK = case({"critical": 0, "high": 1, "normal": 2, "low": 3}, value=Delivery.priority, else_=2)
_FAN_OUT_BATCH = 500
_SHARED_STATE_ERRORS = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class _Job:
    """What one attempt needs, read before the request so no connection is held during it."""

    delivery_id: uuid.UUID
    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    rate: float | None
    secrets: list[str]
    body: bytes


class DeliveryEngine:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        box: SecretBox,
        breaker: Breaker,
        limiter: Limiter,
        client: httpx.AsyncClient,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._box = box
        self._breaker = breaker
        self._limiter = limiter
        self._client = client
        self._postgres = sessions.kw["bind"].dialect.name == "postgresql"

    async def fan_out(self, event_ids: list[uuid.UUID]) -> int:
        async with self._sessions() as session, session.begin():
            events = list(
                await session.scalars(
                    select(Event).where(Event.id.in_(event_ids), Event.fanned_out_at.is_(None)).with_for_update(skip_locked=True)
                )
            )
            return await fan_out(session, events)

    async def fan_out_pending(self, older_than: float = 0.0) -> int:
        """The sweeper's half for events: fan out whatever was stored but not fanned out."""
        total = 0
        while True:
            cutoff = utcnow() - timedelta(seconds=older_than)
            async with self._sessions() as session, session.begin():
                events = list(
                    await session.scalars(
                        select(Event)
                        .where(Event.fanned_out_at.is_(None), Event.received_at <= cutoff)
                        .order_by(Event.received_at)
                        .limit(_FAN_OUT_BATCH)
                        .with_for_update(skip_locked=True)
                    )
                )
                total += await fan_out(session, events)
            if len(events) < _FAN_OUT_BATCH:
                return total

    async def claim(self, limit: int) -> list[uuid.UUID]:
        """Lease up to ``limit`` due deliveries, most urgent priority first."""
        if limit <= 0:
            return []
        now = utcnow()
        due = (
            select(Delivery.id)
            .where(
                Delivery.status.in_(OPEN_STATUSES),
                Delivery.next_attempt_at <= now,
                or_(Delivery.locked_until.is_(None), Delivery.locked_until < now),
            )
            .order_by(_RANK, Delivery.next_attempt_at)
            .limit(limit)
        )
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        lease = now + timedelta(seconds=self._settings.lease_seconds)
        async with self._sessions() as session, session.begin():
            claimed = await session.scalars(
                update(Delivery)
                .where(Delivery.id.in_(due.scalar_subquery()))
                .values(locked_until=lease)
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
            return list(claimed)

    async def attempt(self, delivery_id: uuid.UUID) -> None:
        """One attempt of a claimed delivery (or a wait, when its breaker or rate limit says so)."""
        job = await self._prepare(delivery_id)
        if job is None:
            return
        retry_at = await self._gate(job)
        if retry_at is not None:
            await self._postpone(delivery_id, datetime.fromtimestamp(retry_at, UTC))
            return
        started = utcnow()
        headers = webhook_headers(job.secrets, f"msg_{job.delivery_id.hex}", int(time.time()), job.body)
        result = await send(
            self._client,
            job.url,
            job.body,
            headers,
            allow_private=self._settings.allow_private_endpoints,
            timeout=self._settings.delivery_timeout,
        )
        await self._record(job, started, result, await self._report(job, result.ok))

    async def _gate(self, job: _Job) -> float | None:
        """When may this endpoint be sent to: None for now, else a unix time (breaker or rate limit).

        Both live in Redis in production. If it is unreachable the gate opens: a missed limit
        costs less than deliveries that stall until Redis returns.
        """
        try:
            retry_at = await self._breaker.acquire(str(job.endpoint_id))
            if retry_at is None and job.rate:
                decision = await self._limiter.hit(f"ep:{job.endpoint_id}", Rate(job.rate, max(1, int(job.rate))))
                retry_at = None if decision.allowed else time.time() + decision.retry_after
        except _SHARED_STATE_ERRORS:
            _log.warning("breaker/limiter unreachable; sending without them", exc_info=True)
            return None
        return retry_at

    async def _report(self, job: _Job, ok: bool) -> str | None:
        """Tell the breaker; an unreachable one must not stop the outcome from being recorded."""
        try:
            return await self._breaker.record(str(job.endpoint_id), ok)
        except _SHARED_STATE_ERRORS:
            _log.warning("breaker unreachable; outcome recorded without it", exc_info=True)
            return None

    async def _prepare(self, delivery_id: uuid.UUID) -> _Job | None:
        async with self._sessions() as session, session.begin():
            delivery = await session.get(Delivery, delivery_id)
            if delivery is None or delivery.status not in OPEN_STATUSES:
                return None
            endpoint = await session.get(Endpoint, delivery.endpoint_id)
            if endpoint is None or endpoint.deleted_at is not None or not endpoint.enabled:
                why = "endpoint deleted" if endpoint is None or endpoint.deleted_at else "endpoint disabled"
                _finish(delivery, DEAD, why)
                return None
            body = await session.scalar(select(Event.body).where(Event.id == delivery.event_id))
            return _Job(
                delivery_id=delivery.id,
                tenant_id=delivery.tenant_id,
                endpoint_id=endpoint.id,
                url=endpoint.url,
                rate=endpoint.rate_limit_per_second,
                secrets=active_plaintexts(self._box, endpoint.secrets, utcnow()),
                body=body or b"",
            )

    async def _postpone(self, delivery_id: uuid.UUID, until: datetime) -> None:
        """Wait without spending an attempt (open circuit or endpoint rate limit)."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.status.in_(OPEN_STATUSES))
                .values(next_attempt_at=until, locked_until=None)
            )

    async def _record(self, job: _Job, started: datetime, result: SendResult, transition: str | None) -> None:
        async with self._sessions() as session, session.begin():
            delivery = await session.get(Delivery, job.delivery_id, with_for_update=True)
            if delivery is None:
                return
            delivery.attempt_count += 1
            session.add(
                Attempt(
                    tenant_id=job.tenant_id,
                    delivery_id=job.delivery_id,
                    number=delivery.attempt_count,
                    started_at=started,
                    duration_ms=result.duration_ms,
                    status_code=result.status_code,
                    error=result.error,
                    response_excerpt=result.response_excerpt or None,
                )
            )
            if delivery.status in OPEN_STATUSES:  # a duplicate after a lease expiry leaves a finished row as is
                delivery.last_status_code, delivery.last_error = result.status_code, result.error
                delivery.last_attempt_at = started
                await self._advance(session, delivery, job, result)
            if transition is not None:
                kind = operational.CIRCUIT_OPENED if transition == "opened" else operational.CIRCUIT_CLOSED
                await operational.emit(session, job.tenant_id, kind, {"endpoint_id": str(job.endpoint_id)}, exclude=job.endpoint_id)
        _log.info(
            "attempt",
            extra={"delivery_id": str(job.delivery_id), "endpoint_id": str(job.endpoint_id), "status": result.status_code, "error": result.error},
        )

    async def _advance(self, session: AsyncSession, delivery: Delivery, job: _Job, result: SendResult) -> None:
        if result.ok:
            _finish(delivery, SUCCEEDED, None)
            return
        if result.status_code == 410:
            await self._disable_endpoint(session, job)
            _finish(delivery, DEAD, "endpoint answered 410 Gone: it was disabled")
        else:
            delay = next_delay(
                delivery.attempt_count,
                self._settings.retry_delays,
                retry_after=result.retry_after,
                max_retry_after=self._settings.retry_after_max_seconds,
            )
            if delay is not None:
                delivery.status, delivery.locked_until = FAILED, None
                delivery.next_attempt_at = utcnow() + timedelta(seconds=delay)
                return
            _finish(delivery, DEAD, result.error)
        await operational.emit(
            session,
            job.tenant_id,
            operational.DELIVERY_DEAD,
            {"delivery_id": str(delivery.id), "event_id": str(delivery.event_id), "endpoint_id": str(job.endpoint_id),
             "attempts": delivery.attempt_count, "last_error": delivery.last_error},
            exclude=job.endpoint_id,
        )

    async def _disable_endpoint(self, session: AsyncSession, job: _Job) -> None:
        await session.execute(update(Endpoint).where(Endpoint.id == job.endpoint_id).values(enabled=False))
        await operational.emit(
            session, job.tenant_id, operational.ENDPOINT_DISABLED,
            {"endpoint_id": str(job.endpoint_id), "reason": "410 Gone"}, exclude=job.endpoint_id,
        )


def _finish(delivery: Delivery, status: str, error: str | None) -> None:
    delivery.status, delivery.locked_until, delivery.next_attempt_at = status, None, None
    delivery.completed_at = utcnow()
    if error is not None:
        delivery.last_error = error
