"""``/api/v1/replays`` (bulk replay jobs), ``/api/v1/deliveries/redrive`` and
``/api/v1/sources/{id}/backfill``: every way to get events delivered again is a job here."""

from __future__ import annotations

import uuid

from litestar import Controller, get, post

from delivery.replays.models import ReplayJob
from delivery.replays.schemas import BackfillCreate, RedriveCreate, ReplayCreate, ReplayJobOut
from delivery.replays.service import ReplayService
from gateway.pagination import Page, page_of, paginate
from tenants.auth import tenant_scoped


class ReplayController(Controller):
    path = "/api/v1"
    tags = ["replays"]
    dependencies = tenant_scoped("service", ReplayService)

    @post("/replays", operation_id="createReplay", status_code=202, summary="Replay every event of a time window")
    async def create(self, service: ReplayService, data: ReplayCreate) -> ReplayJobOut:
        """Events Hookgate received in [since, until), optionally only some types, one source, one
        endpoint, or only those whose delivery died. Each gets a new delivery with its own webhook-id."""
        return ReplayJobOut.of(await service.replay(data))

    @get("/replays", operation_id="listReplays", summary="Replay jobs (replays, redrives, backfills), newest first")
    async def list_jobs(self, service: ReplayService, cursor: str | None = None, limit: int = 50) -> Page[ReplayJobOut]:
        rows = await service.repo.fetch(paginate(service.repo.scoped(), ReplayJob.created_at, ReplayJob.id, cursor, limit))
        return page_of(rows, limit, "created_at", ReplayJobOut.of)

    @get("/replays/{job_id:uuid}", operation_id="getReplay", summary="A job's progress")
    async def get_job(self, service: ReplayService, job_id: uuid.UUID) -> ReplayJobOut:
        return ReplayJobOut.of(await service.repo.get(job_id))

    @post("/replays/{job_id:uuid}/cancel", operation_id="cancelReplay", status_code=200, summary="Stop a job")
    async def cancel(self, service: ReplayService, job_id: uuid.UUID) -> ReplayJobOut:
        return ReplayJobOut.of(await service.cancel(job_id))

    @post("/deliveries/redrive", operation_id="redriveDeadLetters", status_code=202, summary="Retry dead letters")
    async def redrive(self, service: ReplayService, data: RedriveCreate | None = None) -> ReplayJobOut:
        """The dead deliveries matching the filters are retried in place, with a fresh retry schedule."""
        return ReplayJobOut.of(await service.redrive(data or RedriveCreate()))

    @post("/sources/{source_id:uuid}/backfill", operation_id="backfillSource", status_code=202, summary="Fetch missed Stripe events")
    async def backfill(self, service: ReplayService, source_id: uuid.UUID, data: BackfillCreate) -> ReplayJobOut:
        """Lists the account's events through Stripe's API with the source's key; events already
        stored are skipped, the rest are stored and delivered like any other."""
        return ReplayJobOut.of(await service.backfill(source_id, data))
