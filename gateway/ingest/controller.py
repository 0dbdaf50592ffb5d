"""``POST /ingest/{token}``: where providers send events.

Most requests never reach this route: ``IngestFastPath`` answers those with a ``Content-Length``
within the limit before Litestar routes them. This route answers the rest (chunked bodies, a
missing or malformed length, a declared body over the limit, through Litestar's own checks) and
documents the operation in OpenAPI. It takes the service from the app state (``INGEST_STATE``)
rather than dependency injection. The doorbell is rung by the group commit, once per batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import msgspec
from litestar import Request, post
from litestar.exceptions import HTTPException

from gateway.ingest.service import IngestService, observe
from gateway.problems import Problem

INGEST_STATE = "ingest"


class IngestReceipt(msgspec.Struct):
    id: uuid.UUID
    duplicate: bool


def headers_of(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased request headers from the ASGI scope; the first of a repeated header wins."""
    headers: dict[str, str] = {}
    for name, value in raw:
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
    except HTTPException as exc:
        if exc.status_code == 413:  # larger than the limit: refused before the source is looked up
            observe(None, "too_large", started)
            raise
        # The client left before its body ended (Litestar's 500 "disconnected prematurely"): nothing
        # of ours failed, so neither an ingest error (it paged) nor a 5xx; no answer reaches it anyway.
        raise Problem(400, "incomplete-body", "the request ended before its body did") from None
    service: IngestService = request.app.state[INGEST_STATE]
    accepted = await service.ingest(token, body, headers_of(request.scope["headers"]))
    return IngestReceipt(id=accepted.id, duplicate=accepted.duplicate)
