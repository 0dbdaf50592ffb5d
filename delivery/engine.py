"""Delivery attempts: claim due rows under a lease, send once, record the outcome as data.

A claim sets ``locked_until``; a worker that dies mid-request simply lets the lease run out and
another claims the row again (at-least-once). Nothing about the schedule lives in the queue.
The database connection is not held while the HTTP request is in flight. Work is batched on
both sides of it: a claim's jobs are read together (``delivery.jobs``) and concurrent
attempts' outcomes are committed together (``delivery.outcomes``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import ContextManager

from opentelemetry.trace import Span, SpanKind
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import gauges
from delivery.breaker import Breaker
from delivery.claim import Claimed, fair_claim
from delivery.fanout import STRANDED_BATCH, fan_out_rung, fan_out_stranded
from delivery.jobs import Job, JobReader, finish_waiting
from delivery.operational import disable_endpoint
from delivery.outcomes import Outcome, OutcomeWriter, Postponements
from delivery.sender import DeliveryClient, SendResult, send
from delivery.signing import webhook_headers
from gateway.database import utcnow
from gateway.events.models import DEAD, SUCCEEDED
from gateway.limiter import Limiter, Rate
from gateway.metrics import ATTEMPT_LATENCY, ATTEMPTS, DELIVERIES, DELIVERY_LAG, labelled
from gateway.settings import Settings
from gateway.tracing import context_of, current_span, trace_id_hex, tracing
from tenants.crypto import SecretBox

_log = logging.getLogger("hookgate.delivery")
# Outcomes per group commit, and commits in flight at once: one, so a busy worker's outcomes
# gather into large batches (more in flight made smaller batches and cost CPU, docs/PERFORMANCE.md).
_OUTCOME_BATCH = 200
_OUTCOME_COMMITS = 1
_SHARED_STATE_ERRORS = (RedisError, OSError)
# A rate-limited endpoint's refused deliveries return one interval apart, up to this far ahead (a
# longer backlog comes back in waves of this length: a newer, more urgent event waits at most this).
_SPREAD_SECONDS = 30.0
_RETURNS_KEPT = 10_000
_AGE_CHECK_SECONDS = 30.0


class DeliveryEngine:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        box: SecretBox,
        breaker: Breaker,
        limiter: Limiter,
        client: DeliveryClient,
        control_sessions: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self._sessions = sessions
        # The pass (fan-out and claim) on connections of their own: the dispatcher must not queue
        # for a connection behind dozens of attempts, or every newly due delivery waits for them.
        # They plan each statement once (generic plans, ``gateway.wiring``), which only the pass's
        # statements are written for: the sweep and the gauges use the shared pool.
        self._control = control_sessions or sessions
        self._settings = settings
        self._breaker = breaker
        self._limiter = limiter
        self._client = client
        self._claim = fair_claim(sessions.kw["bind"].dialect.name, JobReader(box))
        self._outcomes = OutcomeWriter(sessions, settings, max_items=_OUTCOME_BATCH, concurrency=_OUTCOME_COMMITS)
        self._waits = Postponements(sessions, max_items=_OUTCOME_BATCH, concurrency=_OUTCOME_COMMITS)
        self._default_cap = settings.tenant_delivery_concurrency
        # Slots of this worker that tenants over their concurrency cap may not borrow.
        self._reserve = max(1, settings.delivery_concurrency // 8)
        self._returns: dict[uuid.UUID, float] = {}  # per rate-limited endpoint: when its next refused delivery returns
        self._opened: dict[uuid.UUID, tuple[float, float | None]] = {}  # per endpoint: (ask again after, open since)

    async def fan_out_pending(self, older_than: float = 0.0) -> int:
        """The sweeper's half for events: fan out whatever was stored but not fanned out; returns how many events."""
        total = 0
        while True:
            async with self._sessions() as session, session.begin():
                events = await fan_out_stranded(session, utcnow() - timedelta(seconds=older_than))
            total += events
            if events < STRANDED_BATCH:
                return total

    async def refresh_gauges(self) -> None:
        async with self._sessions() as session:
            await gauges.refresh(session, self._breaker)

    async def claim(self, limit: int, rung: Sequence[uuid.UUID] = ()) -> Claimed:
        """Fan out the ``rung`` events, then lease up to ``limit`` due deliveries, fairly across
        tenants (``delivery.claim``), and read their jobs. Without room to claim, the fan-out runs
        on its own, so rung deliveries never jump a full worker. A pass that fails loses nothing:
        what it fanned out is due for the next pass, what it leased comes back when the lease runs
        out.

        The candidates are read without row locks (window functions rule out ``FOR UPDATE``); the
        lease is a compare-and-set that re-checks each row, so two workers never lease one row.
        Leased deliveries whose endpoint is gone or disabled are made dead and have no job.
        ``more``: the claim was full, or rows over their tenant's share were left.
        """
        async with self._control() as session, session.begin():  # connects only once a statement runs
            if limit <= 0:
                if rung:
                    await fan_out_rung(session, rung)
                return Claimed([], [], more=True)
            params = {"limit": limit, "default_cap": self._default_cap, "borrow_to": limit - self._reserve}
            claimed = await self._claim(session, rung, params, timedelta(seconds=self._settings.lease_seconds))
        for tenant_id in claimed.dead:  # committed: finished like any other delivery, with no attempt
            labelled(DELIVERIES, str(tenant_id), DEAD).inc()
        return claimed

    async def attempt(self, job: Job) -> None:
        """One attempt of a claimed delivery (or a wait, when its breaker or rate limit says so)."""
        retry_at = await self._gate(job)
        if retry_at is not None:
            if not await self._given_up(job):
                await self._waits.postpone(job.delivery_id, datetime.fromtimestamp(retry_at, UTC), job.leased_until)  # spends no attempt
            return
        with self._span(job) as span:
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
            if result.status_code is not None:
                span.set_attribute("http.response.status_code", result.status_code)
            await self._record(job, started, result, await self._report(job, result.ok), trace_id_hex(span))

    @staticmethod
    def _span(job: Job) -> ContextManager[Span]:
        """The attempt's span, in the event's trace; its attributes are built only while tracing."""
        if not tracing():
            return current_span("delivery.attempt")
        attributes = {
            "hookgate.tenant_id": str(job.tenant_id),
            "hookgate.event_id": str(job.event_id),
            "hookgate.endpoint_id": str(job.endpoint_id),
            "hookgate.delivery_id": str(job.delivery_id),
        }
        return current_span("delivery.attempt", context=context_of(job.trace_context), kind=SpanKind.CLIENT, attributes=attributes)

    async def _gate(self, job: Job) -> float | None:
        """When may this endpoint be sent to: None for now, else a unix time (breaker or rate limit).

        The rate limit is asked first: a breaker that hands this caller its probe expects it sent,
        and a probe the limit then held back would leave the circuit waiting out the probe timeout.
        (A token spent on a caller the breaker then holds back only slows a sending that is paused.)
        Both live in Redis in production. If it is unreachable the gate opens: a missed limit
        costs less than deliveries that stall until Redis returns.
        """
        try:
            if job.rate:
                decision = await self._limiter.hit(f"ep:{job.endpoint_id}", Rate(job.rate, max(1, int(job.rate))))
                if not decision.allowed:
                    return self._queued_after(job, time.time() + decision.retry_after)
            retry_at = await self._breaker.acquire(str(job.endpoint_id))
        except _SHARED_STATE_ERRORS:
            _log.warning("breaker/limiter unreachable; sending without them", exc_info=True)
            return None
        return retry_at

    async def _given_up(self, job: Job) -> bool:
        """Whether the endpoint's circuit has stayed open past ``endpoint_disable_after_open_seconds``:
        then the endpoint is disabled (``endpoint.disabled``, as Svix disables an endpoint that failed
        for days) and its waiting deliveries are made dead, this one included. Held back without
        spending attempts, they would otherwise wait for ever, one probe per cool-down, and never
        reach the dead letters. Deliveries other workers hold end at their next claim."""
        limit = self._settings.endpoint_disable_after_open_seconds
        since = await self._open_since(job.endpoint_id) if limit else None
        if since is None or time.time() - since < limit:
            return False
        opened = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        why = f"endpoint disabled: its circuit was open from {opened}, longer than {limit:g} s"
        async with self._sessions() as session, session.begin():
            await disable_endpoint(session, job.tenant_id, job.endpoint_id, f"circuit open since {opened}")
            dead = await finish_waiting(session, job.endpoint_id, job.delivery_id, why)
        for _ in dead:
            labelled(DELIVERIES, str(job.tenant_id), DEAD).inc()
        return True

    async def _open_since(self, endpoint_id: uuid.UUID) -> float | None:
        """The breaker's ``open_since``, asked at most every ``_AGE_CHECK_SECONDS`` per endpoint: it is
        a round trip, and every held-back delivery asks."""
        now = time.monotonic()
        known = self._opened.get(endpoint_id)
        if known is None or known[0] < now:
            try:
                since = await self._breaker.open_since(str(endpoint_id))
            except _SHARED_STATE_ERRORS:
                return None
            if len(self._opened) > _RETURNS_KEPT:
                self._opened = {endpoint: entry for endpoint, entry in self._opened.items() if entry[0] >= now}
            known = self._opened[endpoint_id] = (now + _AGE_CHECK_SECONDS, since)
        return known[1]

    def _queued_after(self, job: Job, earliest: float) -> float:
        """When a delivery the endpoint's rate limit refused comes back: one interval after the last
        one this worker sent back (that queue reaching at most ``_SPREAD_SECONDS`` ahead), and never
        before ``earliest``, when the limit lets one through. All at ``earliest``, a backlog returned
        every interval to be claimed and postponed whole again: thousands of row updates a second
        to send one request a second, at every other tenant's expense."""
        now = time.time()
        if len(self._returns) > _RETURNS_KEPT:
            self._returns = {endpoint: at for endpoint, at in self._returns.items() if at > now}
        slot = max(earliest, min(self._returns.get(job.endpoint_id, 0.0), now + _SPREAD_SECONDS))  # never before the limit allows
        self._returns[job.endpoint_id] = slot + 1 / (job.rate or 1)
        return slot

    async def _report(self, job: Job, ok: bool) -> str | None:
        """Tell the breaker; an unreachable one must not stop the outcome from being recorded."""
        try:
            return await self._breaker.record(str(job.endpoint_id), ok)
        except _SHARED_STATE_ERRORS:
            _log.warning("breaker unreachable; outcome recorded without it", exc_info=True)
            return None

    async def _record(
        self, job: Job, started: datetime, result: SendResult, transition: str | None, trace_id: str | None
    ) -> None:
        status_class = f"{result.status_code // 100}xx" if result.status_code else "error"
        labelled(ATTEMPTS, str(job.tenant_id), "success" if result.ok else "failure", status_class).inc()
        labelled(ATTEMPT_LATENCY, status_class).observe(result.duration_ms / 1000)
        written = await self._outcomes.write(
            Outcome(job.delivery_id, job.tenant_id, job.endpoint_id, started, result, transition, trace_id, job.leased_until)
        )
        if written.finished:
            labelled(DELIVERIES, str(job.tenant_id), written.status).inc()
            if written.status == SUCCEEDED and written.live:
                # Received → delivered, for live traffic only: a replay or redrive of yesterday's event is not lag.
                labelled(DELIVERY_LAG, job.priority).observe((utcnow() - job.received_at).total_seconds())
        # A success is in the attempts table already: its line is for debugging (one per delivery under load).
        _log.log(
            logging.DEBUG if result.ok else logging.INFO,
            "attempt",
            extra={
                "tenant_id": str(job.tenant_id),
                "delivery_id": str(job.delivery_id),
                "endpoint_id": str(job.endpoint_id),
                "status_code": result.status_code,
                "error": result.error,
                "outcome": written.status,
                "duration_ms": result.duration_ms,
                "event_id": str(job.event_id),
                "trace_id": trace_id,
            },
        )
        if transition is not None:
            _log.info("circuit " + transition, extra={"tenant_id": str(job.tenant_id), "endpoint_id": str(job.endpoint_id)})
