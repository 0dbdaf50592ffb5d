"""``POST /ingest/{token}``: where providers send events.

The hottest route, so it takes the leanest path Litestar allows for a documented route: its two
collaborators come from the app state (``INGEST_STATE``) rather than dependency injection, and the
doorbell rings in a task of its own rather than a response background task (together about a
sixth of the route's CPU in a profile under load). The ring still follows the commit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import msgspec
from litestar import Request, post
from litestar.exceptions import HTTPException

from gateway.doorbell import Doorbell, ring_safely
from gateway.ingest.service import Accepted, IngestService, observe
from gateway.tracing import context_of, tracer

INGEST_STATE = "ingest"
_rings: set[asyncio.Task[None]] = set()  # strong references until each ring is done


@dataclass(frozen=True, slots=True)
class IngestDeps:
    service: IngestService
    doorbell: Doorbell


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
) -> IngestReceipt:
    """Answers only after the commit; the doorbell rings after it, alongside the answer."""
    started = time.perf_counter()
    try:
        body = await request.body()
    except HTTPException as exc:  # larger than the limit: refused before the source is looked up
        observe(None, "too_large" if exc.status_code == 413 else "error", started)
        raise
    deps: IngestDeps = request.app.state[INGEST_STATE]
    accepted = await deps.service.ingest(token, body, _headers(request))
    if not accepted.duplicate:
        ring = asyncio.create_task(_enqueue(deps.doorbell, accepted))
        _rings.add(ring)
        ring.add_done_callback(_rings.discard)
    return IngestReceipt(id=accepted.id, duplicate=accepted.duplicate)
