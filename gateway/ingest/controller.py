"""``POST /ingest/{token}``: where providers send events."""

from __future__ import annotations

import uuid

import msgspec
from litestar import Request, Response, post
from litestar.background_tasks import BackgroundTask

from gateway.doorbell import Doorbell, ring_safely
from gateway.ingest.service import IngestService


class IngestReceipt(msgspec.Struct):
    id: uuid.UUID
    duplicate: bool


def _headers(request: Request) -> dict[str, str]:  # type: ignore[type-arg]
    """Lower-cased request headers; the first of a repeated header wins."""
    headers: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


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
    accepted = await ingest_service.ingest(token, await request.body(), _headers(request))
    ring = None if accepted.duplicate else BackgroundTask(ring_safely, doorbell, [accepted.id])
    return Response(IngestReceipt(id=accepted.id, duplicate=accepted.duplicate), background=ring)
