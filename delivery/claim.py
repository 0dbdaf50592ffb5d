"""The dispatcher's pass: lease due deliveries fairly across tenants, and read their jobs.

Per dialect: on Postgres a pass is one statement (the claim, or the rung events' fan-out and the
claim together); SQLite, which has no data-modifying CTE, fans out, chooses and leases in three
statements of one transaction. ``fair_claim`` picks the one for the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnClause, Integer, Row, TextClause, Uuid, bindparam, column, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.fanout import RUNG_FAN_OUT_CTES, fan_out_rung, made_cte_sql
from delivery.jobs import LEASED, Job, JobReader, jobs_of
from gateway.database import UTCDateTime, among, postgres_sql, utcnow
from gateway.events.models import OPEN_STATUSES, Delivery
from gateway.events.repository import unleased

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
_CLAIM = _claim_statement(_CLAIM_POSTGRES, *_JOB_COLUMNS)
_FAN_OUT_AND_CLAIM = _claim_statement(_FAN_OUT_AND_CLAIM_POSTGRES, *_JOB_COLUMNS)
_CHOOSE_SQLITE = _claim_statement("WITH" + _DUE_SQLITE + _BY_LOAD + _CHOSEN_SQLITE, column("id", Uuid()))
_deliveries = Delivery.__table__
# SQLite's lease of the chosen rows: a compare-and-set on each.
_LEASE_SQLITE = (
    update(_deliveries)
    .where(among("sqlite", _deliveries.c.id, "ids"), _deliveries.c.status.in_(OPEN_STATUSES), unleased(bindparam("now", type_=UTCDateTime())))
    .values(locked_until=bindparam("lease", type_=UTCDateTime()))
    .returning(_deliveries.c.id)
)


@dataclass(frozen=True, slots=True)
class Claimed:
    ids: list[uuid.UUID]  # every delivery leased
    jobs: list[Job]  # those still to attempt (an endpoint gone or disabled ends its deliveries)
    dead: list[uuid.UUID] = field(default_factory=list)  # the tenant of each delivery so ended
    # Whether due rows may be left that this claim did not take (it was full, or rows were over
    # their tenant's share): only then is finished work a reason to claim again before a ring.
    more: bool = False


class FairClaim(Protocol):
    async def __call__(self, session: AsyncSession, rung: Sequence[uuid.UUID], params: dict[str, Any], lease: timedelta) -> Claimed:
        """Fan out the ``rung`` events and lease up to ``params["limit"]`` due deliveries for ``lease``.

        ``params`` also holds the claim's ``default_cap`` and ``borrow_to`` (see ``_BY_LOAD``)."""
        ...


def fair_claim(dialect: str, jobs: JobReader) -> FairClaim:
    return _PostgresClaim(jobs) if dialect == "postgresql" else _SQLiteClaim(jobs)


class _PostgresClaim:
    """One statement, atomic on its own (the control sessions run in autocommit, ``gateway.wiring``):
    the claim, or with rung events the fan-out and the claim together (``_FAN_OUT_AND_CLAIM``)."""

    def __init__(self, jobs: JobReader) -> None:
        self._jobs = jobs

    async def __call__(self, session: AsyncSession, rung: Sequence[uuid.UUID], params: dict[str, Any], lease: timedelta) -> Claimed:
        now = utcnow()
        params = {**params, "now": now, "lease": now + lease}
        if rung:
            params["ids"] = list(rung)
        more, rows = _counted((await session.execute(_FAN_OUT_AND_CLAIM if rung else _CLAIM, params)).all(), params["limit"])
        read = await self._jobs.jobs(session, rows, params["lease"])
        return Claimed(list(dict.fromkeys(row.id for row in rows)), read.jobs, dead=read.dead, more=more)


class _SQLiteClaim:
    """The fan-out, the choice and the lease, one statement each, in the caller's transaction."""

    def __init__(self, jobs: JobReader) -> None:
        self._jobs = jobs

    async def __call__(self, session: AsyncSession, rung: Sequence[uuid.UUID], params: dict[str, Any], lease: timedelta) -> Claimed:
        if rung:
            await fan_out_rung(session, rung)
        now = utcnow()  # after the fan-out: its deliveries are due from the time it made them
        more, rows = _counted((await session.execute(_CHOOSE_SQLITE, {**params, "now": now})).all(), params["limit"])
        ids = [row.id for row in rows]
        until = now + lease
        leased = list(await session.scalars(_LEASE_SQLITE, {"ids": ids, "now": now, "lease": until})) if ids else []
        read = await self._jobs.read(session, leased, until)
        return Claimed(leased, read.jobs, dead=read.dead, more=more)


def _counted(rows: Sequence[Row[Any]], limit: int) -> tuple[bool, list[Row[Any]]]:
    """Whether the claim left due rows (it was full, or rows were over their tenant's share), and
    its rows less the counts-only one an empty claim returns."""
    more = rows[0].candidates == limit or rows[0].chosen < rows[0].candidates
    return more, [row for row in rows if row.id is not None]
