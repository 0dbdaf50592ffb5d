"""``POST /ingest/{token}``: where providers send events.

The hottest route, so it takes the leanest path Litestar allows for a documented route: the
service comes from the app state (``INGEST_STATE``) rather than dependency injection (Litestar's DI
was a good part of the route's CPU in a profile under load). The doorbell is rung by the group
commit, once per committed batch.
"""

from __future__ import annotations

import time
import uuid

import msgspec
from litestar import Request, post
from litestar.exceptions import HTTPException

from gateway.ingest.service import IngestService, observe

INGEST_STATE = "ingest"


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
) -> IngestReceipt:
    """Answers only after the commit."""
    started = time.perf_counter()
    try:
        body = await request.body()
    except HTTPException as exc:  # larger than the limit: refused before the source is looked up
        observe(None, "too_large" if exc.status_code == 413 else "error", started)
        raise
    service: IngestService = request.app.state[INGEST_STATE]
    accepted = await service.ingest(token, body, _headers(request))
    return IngestReceipt(id=accepted.id, duplicate=accepted.duplicate)
