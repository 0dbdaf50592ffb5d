"""Starting and cancelling replay jobs; the runner does the work in batches."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.replays import steps
from delivery.replays.models import ACTIVE, BACKFILL, CANCELLED, COMPLETED, REDRIVE, REPLAY, ReplayJob
from delivery.replays.schemas import BackfillCreate, RedriveCreate, ReplayCreate
from gateway.database import as_utc, utcnow
from gateway.events.models import Delivery
from gateway.events.priority import patterns_error
from gateway.problems import Problem, not_found
from gateway.repository import TenantRepository
from tenants.endpoints.models import Endpoint
from tenants.endpoints.service import EndpointRepository
from tenants.sources.service import SourceRepository


class ReplayJobRepository(TenantRepository[ReplayJob]):
    model = ReplayJob
    noun = "replay job"


class ReplayService:
    def __init__(self, session: AsyncSession, tenant_id: uuid.UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.repo = ReplayJobRepository(session, tenant_id)

    async def replay(self, data: ReplayCreate) -> ReplayJob:
        since, until = _window(data.since, data.until)
        if data.types and (error := patterns_error(data.types)):
            raise Problem(422, "invalid-types", f"types: {error}")
        if data.source_id is not None:
            await SourceRepository(self.session, self.tenant_id).get(data.source_id)
        await self._check_endpoints(data.endpoint_id)
        job = self._job(
            REPLAY, since=since, until=until, types=data.types, source_id=data.source_id,
            endpoint_id=data.endpoint_id, only_failed=data.only_failed,
        )
        job.total = await steps.count(self.session, steps.replay_events(job))
        return await self._queue(job)

    async def redrive(self, data: RedriveCreate) -> ReplayJob:
        """A job over exactly the dead letters that match now (later deaths are not included)."""
        since = as_utc(data.since) if data.since else None
        until = as_utc(data.until) if data.until else None
        if since and until and since >= until:
            raise Problem(400, "invalid-window", "since must be before until")
        if data.endpoint_id is not None:
            await EndpointRepository(self.session, self.tenant_id).get(data.endpoint_id)
        ids = None if data.delivery_ids is None else await self._own_deliveries(data.delivery_ids)
        job = self._job(REDRIVE, since=since, until=until, endpoint_id=data.endpoint_id, delivery_ids=ids)
        job.total = await steps.count(self.session, steps.dead_letters(job))
        return await self._queue(job)

    async def _own_deliveries(self, delivery_ids: list[uuid.UUID]) -> list[str]:
        """The chosen ids as the job keeps them; 404 when one is not the tenant's (as for any other id)."""
        chosen = set(delivery_ids)
        found = await self.session.scalar(
            select(func.count()).where(Delivery.tenant_id == self.tenant_id, Delivery.id.in_(chosen))
        )
        if found != len(chosen):
            raise not_found("delivery")
        return sorted(str(value) for value in chosen)

    async def backfill(self, source_id: uuid.UUID, data: BackfillCreate) -> ReplayJob:
        source = await SourceRepository(self.session, self.tenant_id).get(source_id)
        if source.provider != "stripe":
            raise Problem(409, "not-stripe", f"backfill lists events from Stripe; this source is {source.provider}")
        if source.stripe_api_key is None:
            raise Problem(
                409, "no-stripe-api-key", 'set one first: PATCH /api/v1/sources/{id} {"stripe_api_key": "rk_…"}'
            )
        since, until = _window(data.since, data.until)
        return await self._queue(self._job(BACKFILL, since=since, until=until, source_id=source.id))

    async def cancel(self, job_id: uuid.UUID) -> ReplayJob:
        """Stop the job; its deliveries not yet tried are withdrawn (a redrive's go back to dead)."""
        job = await self.repo.get(job_id, for_update=True)
        if job.status not in ACTIVE and job.status != CANCELLED:
            raise Problem(409, "job-finished", f"the job has already {job.status}")
        if job.status != CANCELLED:
            job.status, job.finished_at = CANCELLED, utcnow()
            if job.kind != BACKFILL:  # a backfill's events are the tenant's own, delivered as any other
                await steps.withdraw(self.session, job)
            await self.session.commit()
        return job

    def _job(self, kind: str, **filters: object) -> ReplayJob:
        now = utcnow()
        return ReplayJob(id=uuid.uuid4(), tenant_id=self.tenant_id, kind=kind, created_at=now, updated_at=now, **filters)

    async def _queue(self, job: ReplayJob) -> ReplayJob:
        if job.total == 0:
            job.status, job.finished_at = COMPLETED, job.created_at
        self.session.add(job)
        await self.session.commit()
        return job

    async def _check_endpoints(self, endpoint_id: uuid.UUID | None) -> None:
        if endpoint_id is not None:
            endpoint = await EndpointRepository(self.session, self.tenant_id).get(endpoint_id)
            if not endpoint.enabled:
                raise Problem(409, "endpoint-disabled", "enable the endpoint before replaying to it")
            return
        enabled = await self.session.scalar(
            select(Endpoint.id).where(
                Endpoint.tenant_id == self.tenant_id, Endpoint.enabled.is_(True), Endpoint.deleted_at.is_(None)
            ).limit(1)
        )
        if enabled is None:
            raise Problem(409, "no-endpoints", "the tenant has no enabled endpoint to replay to")


def _window(since: datetime, until: datetime | None) -> tuple[datetime, datetime]:
    """[since, until) with ``until`` at most now: a job covers what exists when it starts."""
    now = utcnow()
    since, until = as_utc(since), min(as_utc(until), now) if until else now
    if since >= until:
        raise Problem(400, "invalid-window", "since must be before until (and before now)")
    return since, until
