"""The replay runner: every worker (and the embedded app) advances every active job one batch at
a time, round-robin, so one tenant's million-event replay does not hold back another's.

Each batch locks its job's row (``SKIP LOCKED``: two workers never run the same batch) and
commits its work together with the job's new cursor. A worker killed mid-batch rolls back with
its connection; the next batch, on any worker, starts from the last committed cursor.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.replays import steps
from delivery.replays.models import ACTIVE, BACKFILL, FAILED, QUEUED, REDRIVE, RUNNING, ReplayJob
from delivery.replays.stripe_listing import StripeUnavailable, list_events
from gateway.background import BackgroundLoop
from gateway.database import utcnow
from gateway.settings import Settings
from tenants.crypto import SecretBox
from tenants.sources.models import Source

_log = logging.getLogger("hookgate.replays")
_JOBS_PER_PASS = 100
_RANKED = select(
    ReplayJob.id,
    ReplayJob.updated_at,
    func.row_number().over(partition_by=ReplayJob.tenant_id, order_by=(ReplayJob.updated_at, ReplayJob.id)).label("turn"),
).where(ReplayJob.status.in_(ACTIVE)).subquery()
_NEXT_PER_TENANT = select(_RANKED.c.id).where(_RANKED.c.turn == 1).order_by(_RANKED.c.updated_at).limit(_JOBS_PER_PASS)


class ReplayRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        box: SecretBox,
        *,
        wake: Callable[[], None],
        poll_interval: float,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._box = box
        self._wake = wake  # new deliveries are due: tell the dispatcher
        self._poll_interval = poll_interval
        self._loop = BackgroundLoop(self._run, name="hookgate-replays")

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def run_pass(self) -> bool:
        """One batch of one active job per tenant (each tenant's least recently moved), for up to
        ``_JOBS_PER_PASS`` tenants; True if any moved. Per tenant, not per job: a tenant's thousand
        jobs once filled every pass while another tenant's one waited behind them."""
        async with self._sessions() as session:
            job_ids = list(await session.scalars(_NEXT_PER_TENANT))
        moved = False
        for job_id in job_ids:
            moved |= await self._batch(job_id)
        return moved

    async def _run(self) -> None:
        while not self._loop.stopping:
            try:
                moved = await self.run_pass()
            except Exception:  # noqa: BLE001 - the database may be down; progress is safe in it
                _log.warning("replay pass failed; retrying", exc_info=True)
                moved = False
            if moved:
                self._wake()
                await asyncio.sleep(0)
            else:
                await self._loop.pause(self._poll_interval)

    async def _batch(self, job_id: uuid.UUID) -> bool:
        async with self._sessions() as session:
            snapshot = await session.get(ReplayJob, job_id)
        if snapshot is None or snapshot.status not in ACTIVE:
            return False
        failure: str | None = None
        try:
            listed = await self._list_stripe(snapshot) if snapshot.kind == BACKFILL else None
        except steps.JobFailed as exc:
            failure = str(exc)
        except StripeUnavailable as exc:
            note = f"{exc}; retrying"
            _log.warning("backfill waits for Stripe", extra={"job_id": str(job_id), "error": note})
            return await self._locked(job_id, snapshot.cursor_id, lambda _s, job: _note(job, note))
        if failure is not None:
            return await self._locked(job_id, snapshot.cursor_id, lambda _s, job: _fail(job, failure))
        return await self._locked(job_id, snapshot.cursor_id, lambda session, job: self._step(session, job, listed))

    async def _locked(self, job_id: uuid.UUID, cursor_id: str | None, action: Callable[[AsyncSession, ReplayJob], Any]) -> bool:
        """Run ``action`` on the job under its row lock, if no other worker holds it or moved it on."""
        async with self._sessions() as session, session.begin():
            if session.bind.dialect.name == "sqlite":
                # No row locks there: write first, so the database's write lock is held from the
                # start and a cancel cannot commit between this read and this batch's write.
                await session.execute(update(ReplayJob).where(ReplayJob.id == job_id).values(updated_at=utcnow()))
            job = await session.scalar(
                select(ReplayJob).where(ReplayJob.id == job_id, ReplayJob.status.in_(ACTIVE)).with_for_update(skip_locked=True)
            )
            if job is None or job.cursor_id != cursor_id:
                return False
            before = (job.status, job.done, job.error)
            if job.status == QUEUED:
                job.status, job.started_at = RUNNING, utcnow()
            try:
                await action(session, job)
            except steps.JobFailed as exc:
                await _fail(job, str(exc))
            job.updated_at = utcnow()
            return (job.status, job.done, job.error) != before

    async def _step(self, session: AsyncSession, job: ReplayJob, listed: tuple[list[dict[str, Any]], bool] | None) -> None:
        if listed is not None:
            job.error = None
            await steps.backfill_batch(session, job, *listed)
            return
        limit = min(self._settings.replay_batch_size, await steps.room(session, job, self._settings.replay_max_in_flight))
        if limit > 0:
            await (steps.redrive_batch if job.kind == REDRIVE else steps.replay_batch)(session, job, limit)

    async def _list_stripe(self, job: ReplayJob) -> tuple[list[dict[str, Any]], bool]:
        """The next events to backfill, and whether they are the last ones."""
        async with self._sessions() as session:
            source = await session.get(Source, job.source_id)
        if source is None or source.stripe_api_key is None:
            raise steps.JobFailed("the source has no Stripe API key any more")
        limit = self._settings.replay_batch_size
        events = await list_events(
            self._box.decrypt(source.stripe_api_key),
            self._settings.stripe_api_base,
            since=job.since,  # type: ignore[arg-type]
            until=job.until,  # type: ignore[arg-type]
            starting_after=job.cursor_id,
            limit=limit,
        )
        return events, len(events) < limit


async def _fail(job: ReplayJob, error: str) -> None:
    job.status, job.error, job.finished_at = FAILED, error, utcnow()
    _log.warning("replay job failed", extra={"job_id": str(job.id), "error": error})


async def _note(job: ReplayJob, error: str) -> None:
    job.error = error
