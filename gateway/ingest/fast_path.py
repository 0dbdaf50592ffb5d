"""``POST /ingest/{token}`` answered in front of Litestar's router.

Ingest is the one route that must be cheap: under ``wrk`` Litestar's router, request and response
objects and its generic middlewares took a quarter of an ingest's CPU (docs/PERFORMANCE.md). So a
request with a ``Content-Length`` within the body limit is read, handed to ``IngestService`` and
answered here, with the same receipt and the same problem details (``render_problem``) as the
Litestar route. Everything else (no or a malformed ``Content-Length``, a declared body over the
limit, another method, a path with more segments) goes on to the router, where the ``ingest``
route and Litestar's own checks answer it; that route also documents the operation in OpenAPI.

Ingest is counted by its own metrics (``hookgate_ingest_*``), not Litestar's per-route HTTP ones.
"""

from __future__ import annotations

import time

import msgspec
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.ingest.controller import IngestReceipt, headers_of
from gateway.ingest.service import IngestService, observe
from gateway.problems import INGEST_PREFIX, PROBLEM_JSON, render_problem

_encode = msgspec.json.Encoder().encode


class IngestFastPath:
    def __init__(self, router: ASGIApp, service: IngestService, *, max_body: int) -> None:
        self.router = router  # Litestar's: it answers what the fast path does not take
        self._service = service
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _token(scope)
        length = _declared_length(scope) if token is not None else None
        if token is None or length is None or length > self._max_body:
            await self.router(scope, receive, send)
            return
        started = time.perf_counter()
        headers = headers_of(scope["headers"])
        try:
            body = await self._body(receive, started)
            if body is None:  # the client went away: nobody to answer
                return
            accepted = await self._service.ingest(token, body, headers)
        except Exception as exc:  # noqa: BLE001 - every failure is answered as the router would answer it
            status, problem, extra = render_problem(exc, scope["path"], self._max_body)
            await _answer(send, status, PROBLEM_JSON, _encode(problem), extra)
            return
        await _answer(send, 200, "application/json", _encode(IngestReceipt(id=accepted.id, duplicate=accepted.duplicate)), {})

    async def _body(self, receive: Receive, started: float) -> bytes | None:
        """The whole body; a 413 if more arrives than the limit allows, as Litestar counts it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                observe(None, "too_large", started)
                raise RequestEntityTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _token(scope: Scope) -> str | None:
    """The token of a ``POST /ingest/{token}`` (one non-empty path segment), else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if not path.startswith(INGEST_PREFIX):
        return None
    token = path[len(INGEST_PREFIX) :]
    return token if token and "/" not in token else None


def _declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, if it has exactly one and it is a plain number."""
    values = [value for name, value in scope["headers"] if name.lower() == b"content-length"]
    if len(values) != 1 or not values[0].isdigit():
        return None
    return int(values[0])


async def _answer(send: Send, status: int, media_type: str, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
