"""``POST /ingest/{token}``: where providers send events."""

from __future__ import annotations

import time
import uuid

import msgspec
from litestar import Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import HTTPException

from gateway.doorbell import Doorbell, ring_safely
from gateway.ingest.service import Accepted, IngestService, observe
from gateway.tracing import context_of, tracer


class IngestReceipt(msgspec.Struct):
    id: uuid.UUID
    duplicate: bool


def _headers(request: Request) -> dict[str, str]:  # type: ignore[type-arg]
    """Lower-cased request headers; the first of a repeated header wins."""
    headers: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


async def _enqueue(doorbell: Doorbell, accepted: Accepted) -> None:
    """The doorbell ring, as the last span of the ingest trace."""
    with tracer.start_as_current_span("enqueue", context=context_of(accepted.traceparent)):
        await ring_safely(doorbell, [accepted.id])


@post(
    "/ingest/{token:str}",
    operation_id="ingestEvent",
    summary="Receive a provider's signed event",
    status_code=200,
    tags=["ingest"],
)
async def ingest(
    request: Request,  # type: ignore[type-arg]
    token: str,
    ingest_service: IngestService,
    doorbell: Doorbell,
) -> Response[IngestReceipt]:
    """Answers only after the commit; the doorbell rings after the answer is sent."""
    started = time.perf_counter()
    try:
        body = await request.body()
    except HTTPException as exc:  # larger than the limit: refused before the source is looked up
        observe(None, "too_large" if exc.status_code == 413 else "error", started)
        raise
    accepted = await ingest_service.ingest(token, body, _headers(request))
    ring = None if accepted.duplicate else BackgroundTask(_enqueue, doorbell, accepted)
    return Response(IngestReceipt(id=accepted.id, duplicate=accepted.duplicate), background=ring)
