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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ContextManager

from opentelemetry.trace import Span, SpanKind
from redis.exceptions import RedisError
from sqlalchemy import ColumnClause, Integer, TextClause, Uuid, bindparam, column, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import gauges
from delivery.breaker import Breaker
from delivery.fanout import RUNG_FAN_OUT_CTES, STRANDED_BATCH, fan_out_rung, fan_out_stranded, made_cte_sql
from delivery.jobs import LEASED, Job, JobReader, jobs_of
from delivery.outcomes import Outcome, OutcomeWriter, Postponements
from delivery.sender import DeliveryClient, SendResult, send
from delivery.signing import webhook_headers
from gateway.database import UTCDateTime, among, postgres_sql, utcnow
from gateway.events.models import OPEN_STATUSES, SUCCEEDED, Delivery
from gateway.events.repository import unleased
from gateway.limiter import Limiter, Rate
from gateway.metrics import ATTEMPT_LATENCY, ATTEMPTS, DELIVERIES, DELIVERY_LAG, labelled
from gateway.settings import Settings
from gateway.tracing import context_of, current_span, trace_id_hex, tracing
from tenants.crypto import SecretBox

_log = logging.getLogger("hookgate.delivery")
# The fair claim's candidates, in the order to take them. Every due row gets its rank ``n``
# within its tenant (priority, then due time) and a *load*: the tenant's leased rows plus ``n``.
# Rows go by load, so the tenant with the least in flight goes next; a row is *within share*
# while its load stays within the tenant's concurrency cap, and rows beyond it come last and
# only borrow idle capacity. The claim takes every candidate within share, and beyond-share ones
# up to ``borrow_to`` (the limit less the worker's reserve: slots a newly active tenant can start
# in at once). Since within-share rows come first, that is: within share, or among the first
# ``borrow_to``. On Postgres the same statement leases the chosen rows (a compare-and-set that
# re-checks each one, so two workers never lease one row) and answers how many were candidates
# and chosen; SQLite has no data-modifying CTE, so it answers the chosen ids and they are leased
# by a statement of their own.
#
# Postgres reads at most ``limit`` rows per tenant and priority, so a claim costs the same
# whatever one tenant's backlog: a loose index scan (the recursive CTE hops from one tenant_id
# to the next on ix_deliveries_open) finds the tenants with open deliveries, and a LATERAL
# join takes each (tenant, priority)'s oldest due rows from the same index: "due" is written as a
# row comparison on that index's columns, which no other index can serve (``next_attempt_at <=
# :now`` alone let the planner read ix_deliveries_due and filter every due row of every tenant,
# for each of the four priorities), and the loose scan's closing NULL is left out. SQLite (embedded
# mode: one process, small backlogs) has no LATERAL and reads every due row.
# Plain SQL because it is static: compiled once, prepared once (SQLAlchemy recompiled the
# equivalent Core statement on every call, ~10 ms, fifty times the query's own cost).
_UNLEASED = "(d.locked_until IS NULL OR d.locked_until < :now)"
_DUE_POSTGRES = f"""
open_tenants(tenant_id) AS (
    (SELECT tenant_id FROM deliveries WHERE status IN ('pending', 'failed') ORDER BY tenant_id LIMIT 1)
  UNION ALL
    SELECT (SELECT d.tenant_id FROM deliveries d
            WHERE d.status IN ('pending', 'failed') AND d.tenant_id > o.tenant_id ORDER BY d.tenant_id LIMIT 1)
    FROM open_tenants o WHERE o.tenant_id IS NOT NULL
),
due AS (
  SELECT oldest.* FROM open_tenants
  CROSS JOIN (VALUES ('critical'), ('high'), ('normal'), ('low')) AS p(priority)
  CROSS JOIN LATERAL (
    SELECT d.id, d.tenant_id, d.priority, d.next_attempt_at FROM deliveries d
    WHERE d.tenant_id = open_tenants.tenant_id AND d.priority = p.priority AND d.status IN ('pending', 'failed')
      AND (d.tenant_id, d.priority, d.next_attempt_at) <= (open_tenants.tenant_id, p.priority, :now) AND {_UNLEASED}
    ORDER BY d.next_attempt_at LIMIT :limit
  ) AS oldest
  WHERE open_tenants.tenant_id IS NOT NULL{{also}}
)"""
_DUE_SQLITE = f"""
due AS (
  SELECT d.id, d.tenant_id, d.priority, d.next_attempt_at FROM deliveries d
  WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= :now AND {_UNLEASED}
)"""
_RANK = "CASE due.priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END"
_BY_LOAD = f""",
busy AS (SELECT tenant_id, count(*) AS busy FROM deliveries WHERE locked_until > :now GROUP BY tenant_id),
ranked AS (
  SELECT due.id, due.tenant_id, due.next_attempt_at, {_RANK} AS rank,
         row_number() OVER (PARTITION BY due.tenant_id ORDER BY {_RANK}, due.next_attempt_at) AS n
  FROM due
),
scored AS (
  SELECT r.id, r.rank, r.next_attempt_at, COALESCE(b.busy, 0) + r.n AS load,
         COALESCE(t.delivery_concurrency, :default_cap) AS cap
  FROM ranked r JOIN tenants t ON t.id = r.tenant_id LEFT JOIN busy b ON b.tenant_id = r.tenant_id
),
candidates AS (
  SELECT id, load <= cap AS within, row_number() OVER (ORDER BY load > cap, load, rank, next_attempt_at) AS k
  FROM scored ORDER BY k LIMIT :limit
),
chosen AS (SELECT id FROM candidates WHERE within OR k <= :borrow_to),
counts AS (SELECT (SELECT count(*) FROM candidates) AS candidates, (SELECT count(*) FROM chosen) AS chosen)"""
_JOBS = jobs_of(LEASED)
_LEASED_COLUMNS = ", ".join(LEASED.c.keys())
# The chosen ids as an array: a primary-key lookup whatever the planner guesses of ``chosen``'s size
# (joined, a misestimate of one row made it walk every open delivery once per chosen row). The
# status test is wrapped in IS TRUE so that a generic plan does not AND the lookup with a read of
# the whole partial index whose predicate it repeats (``ix_deliveries_open``).
_LEASE_CHOSEN = f"""
  UPDATE deliveries AS d SET locked_until = :lease
  WHERE d.id = ANY(ARRAY(SELECT id FROM chosen)) AND (d.status IN ('pending', 'failed')) IS TRUE AND {_UNLEASED}
  RETURNING {", ".join(f"d.{name}" for name in LEASED.c.keys())}"""
_JOBS_AND_COUNTS = f""",
jobs AS ({postgres_sql(_JOBS)})
SELECT counts.candidates, counts.chosen, jobs.* FROM counts LEFT JOIN jobs ON true"""
# The claim alone: the chosen rows leased, with their jobs.
_CLAIM_POSTGRES = "WITH RECURSIVE" + _DUE_POSTGRES.format(also="") + _BY_LOAD + f""",
leased AS ({_LEASE_CHOSEN}
)""" + _JOBS_AND_COUNTS
# The rung events fanned out and claimed together: their deliveries (``matched``) are ranked with
# the rows already due and inserted, those chosen already leased (``made``); a data-modifying CTE's
# rows are not in the statement's snapshot, so the lease of the others cannot see them twice.
_FAN_OUT_AND_CLAIM_POSTGRES = (
    "WITH RECURSIVE\n" + RUNG_FAN_OUT_CTES + ","
    + _DUE_POSTGRES.format(also="\n  UNION ALL SELECT id, tenant_id, priority, next_attempt_at FROM matched")
    + _BY_LOAD + f""",
made AS ({made_cte_sql(LEASED.c.keys())}),
relet AS ({_LEASE_CHOSEN}
),
leased AS (
  SELECT {_LEASED_COLUMNS} FROM relet UNION ALL SELECT {_LEASED_COLUMNS} FROM made WHERE locked_until IS NOT NULL
)""" + _JOBS_AND_COUNTS
)
_CHOSEN_SQLITE = """
SELECT counts.candidates, counts.chosen, chosen.id FROM counts LEFT JOIN chosen ON true"""
_PARAMETERS = (
    bindparam("now", type_=UTCDateTime()),
    bindparam("lease", type_=UTCDateTime()),
    bindparam("ids", type_=postgresql.ARRAY(Uuid())),
)


def _claim_statement(sql: str, *columns: ColumnClause[Any]) -> TextClause:
    return (
        text(sql)
        .bindparams(*(parameter for parameter in _PARAMETERS if f":{parameter.key}" in sql))
        .columns(column("candidates", Integer()), column("chosen", Integer()), *columns)
    )


# Postgres leases the chosen rows and reads their jobs in the same statement: a row per job (and secret).
_JOB_COLUMNS = [column(c.name, c.type) for c in _JOBS.selected_columns]
_FAIR_CLAIM = {
    "postgresql": _claim_statement(_CLAIM_POSTGRES, *_JOB_COLUMNS),
    "sqlite": _claim_statement("WITH" + _DUE_SQLITE + _BY_LOAD + _CHOSEN_SQLITE, column("id", Uuid())),
}
_FAN_OUT_AND_CLAIM = _claim_statement(_FAN_OUT_AND_CLAIM_POSTGRES, *_JOB_COLUMNS)
_deliveries = Delivery.__table__
# Outcomes per group commit, and commits in flight at once: one, so a busy worker's outcomes
# gather into large batches (more in flight made smaller batches and cost CPU, docs/PERFORMANCE.md).
_OUTCOME_BATCH = 200
_OUTCOME_COMMITS = 1
_SHARED_STATE_ERRORS = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class Claimed:
    ids: list[uuid.UUID]  # every delivery leased
    jobs: list[Job]  # those still to attempt (an endpoint gone or disabled ends its deliveries)
    # Whether due rows may be left that this claim did not take (it was full, or rows were over
    # their tenant's share): only then is finished work a reason to claim again before a ring.
    more: bool = False


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
        dialect = sessions.kw["bind"].dialect.name
        self._claim_sql = _FAIR_CLAIM[dialect]
        # SQLite's lease of the chosen rows (Postgres leases them in the claim): a compare-and-set on each.
        self._lease = None if dialect == "postgresql" else (
            update(_deliveries)
            .where(among(dialect, _deliveries.c.id, "ids"), _deliveries.c.status.in_(OPEN_STATUSES),
                   unleased(bindparam("now", type_=UTCDateTime())))
            .values(locked_until=bindparam("lease", type_=UTCDateTime()))
            .returning(_deliveries.c.id)
        )
        self._jobs = JobReader(box)
        self._outcomes = OutcomeWriter(sessions, settings, max_items=_OUTCOME_BATCH, concurrency=_OUTCOME_COMMITS)
        self._waits = Postponements(sessions, max_items=_OUTCOME_BATCH, concurrency=_OUTCOME_COMMITS)
        self._default_cap = settings.tenant_delivery_concurrency
        # Slots of this worker that tenants over their concurrency cap may not borrow.
        self._reserve = max(1, settings.delivery_concurrency // 8)

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
        tenants (see ``_FAIR_CLAIM``), and read their jobs. On Postgres the control sessions run in
        autocommit (``gateway.wiring``) and a pass is one statement, atomic on its own: the claim
        (leasing and reading), or, with rung events and room to claim, the fan-out and the claim
        together (``_FAN_OUT_AND_CLAIM``); without room the fan-out runs alone. A pass that fails
        loses nothing: what it fanned out is due for the next pass, what it leased comes back when
        the lease runs out. On SQLite it is one transaction.

        The candidates are read without row locks (window functions rule out ``FOR UPDATE``); the
        lease is a compare-and-set that re-checks each row, so two workers never lease one row.
        Leased deliveries whose endpoint is gone or disabled are made dead and have no job.
        ``more``: the claim was full, or rows over their tenant's share were left.
        """
        async with self._control() as session, session.begin():  # connects only once a statement runs
            if rung and (limit <= 0 or self._lease is not None):  # no room, or SQLite: the fan-out on its own
                await fan_out_rung(session, rung)
                rung = ()
            if limit <= 0:
                return Claimed([], [], more=True)
            now = utcnow()  # after the fan-out: its deliveries are due from the time it made them
            lease = now + timedelta(seconds=self._settings.lease_seconds)
            params = {"now": now, "limit": limit, "default_cap": self._default_cap, "borrow_to": limit - self._reserve}
            if self._lease is None:
                params["lease"] = lease
            if rung:
                params["ids"] = list(rung)
            rows = (await session.execute(_FAN_OUT_AND_CLAIM if rung else self._claim_sql, params)).all()
            more = rows[0].candidates == limit or rows[0].chosen < rows[0].candidates
            rows = [row for row in rows if row.id is not None]
            if self._lease is None:  # Postgres: leased, and read with their jobs
                return Claimed(list(dict.fromkeys(row.id for row in rows)), await self._jobs.jobs(session, rows), more)
            leased = list(await session.scalars(self._lease, {"ids": [row.id for row in rows], "now": now, "lease": lease})) if rows else []
            return Claimed(leased, await self._jobs.read(session, leased), more)

    async def attempt(self, job: Job) -> None:
        """One attempt of a claimed delivery (or a wait, when its breaker or rate limit says so)."""
        retry_at = await self._gate(job)
        if retry_at is not None:
            await self._waits.postpone(job.delivery_id, datetime.fromtimestamp(retry_at, UTC))  # spends no attempt
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
            Outcome(job.delivery_id, job.tenant_id, job.endpoint_id, started, result, transition, trace_id)
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
