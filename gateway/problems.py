"""RFC 9457 problem details: the one error shape of every 4xx/5xx the app answers."""

from __future__ import annotations

import inspect
import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

_log = logging.getLogger("hookgate.errors")
_TYPE_BASE = "https://hookgate.dev/problems/"
PROBLEM_JSON = "application/problem+json"
# A dependency being down is the service's state, not a bug and not the client's fault: 503.
_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError, RedisConnectionError, RedisTimeoutError, OSError)
# Postgres text cannot hold NUL (SQLSTATE 22021), nor jsonb a \u0000 escape (22P05): whatever
# field, body, query or form it came in, such text is the client's mistake, and nothing was stored.
_UNSTORABLE_TEXT = frozenset({"22021", "22P05"})
# An ingest URL's last segment is its source's token: whoever holds it can post to the tenant.
INGEST_PREFIX = "/ingest/"
# Set in the scope when a request was refused before its route's handler began (a validation,
# guard or authentication error): nothing acted, so nothing about it is worth remembering.
REFUSED_UNSTARTED = "hookgate.refused_unstarted"


class Problem(HTTPException):
    """An error with a stable machine-readable ``kind`` and a sentence for humans."""

    def __init__(
        self,
        status_code: int,
        kind: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers, extra=extra or None)
        self.kind = kind


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", f"{what} not found")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, kind: str, detail: str, instance: str) -> dict[str, Any]:
    return {"type": _TYPE_BASE + kind, "title": _title(status), "status": status, "detail": detail, "instance": instance}


def _kind_for(exc: HTTPException) -> str:
    if isinstance(exc, Problem):
        return exc.kind
    if isinstance(exc, ValidationException):
        return "validation-error"
    return _title(exc.status_code).lower().replace(" ", "-").replace("'", "")


def render_problem(exc: Exception, path: str, max_body: int | None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, ``application/problem+json`` body and headers for any exception; unexpected ones
    become an opaque 500, logged. ``path`` is the request's, ``max_body`` the body limit a 413 names."""
    if isinstance(exc, _UNAVAILABLE):
        _log.warning("dependency unavailable on %s: %s", _loggable(path), type(exc).__name__)
        exc = Problem(503, "service-unavailable", "a backing service is unavailable; retry later", headers={"Retry-After": "5"})
    elif isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _UNSTORABLE_TEXT:
        exc = Problem(400, "invalid-text", "a text value contains a NUL character (\\u0000), which cannot be stored")
    if not isinstance(exc, HTTPException):
        _log.exception("unhandled error on %s", _loggable(path), exc_info=exc)
        status = HTTP_500_INTERNAL_SERVER_ERROR
        return status, problem_body(status, "internal-error", "an unexpected error occurred; it has been logged", path), {}
    status, detail = exc.status_code, exc.detail
    if status == 413 and not isinstance(exc, Problem):
        detail = f"the body is larger than the limit of {max_body} bytes"
    body = problem_body(status, _kind_for(exc), detail, path)
    if isinstance(exc, ValidationException) and exc.extra:
        body["errors"] = [_readable(error) for error in exc.extra] if isinstance(exc.extra, list) else exc.extra
    elif isinstance(exc.extra, dict):
        body.update(exc.extra)
    return status, body, dict(exc.headers or {})


def _readable(error: Any) -> Any:
    """Litestar says a missing body with its parameter's name in quotes (``'data'``, a KeyError's text)."""
    if isinstance(error, dict) and error.get("source") == "body" and error.get("message") == f"'{error.get('key')}'":
        return {**error, "message": "this request needs a JSON body"}
    return error


# Paths whose last part is a credential: an ingest token, a dashboard invitation's token.
_CREDENTIAL_PREFIXES = (INGEST_PREFIX, "/dashboard/invite/")


def _loggable(path: str) -> str:
    """The path for a log line: a credential in it is cut to its first characters."""
    for prefix in _CREDENTIAL_PREFIXES:
        if path.startswith(prefix):
            return f"{prefix}{path[len(prefix) :][:4]}…"
    return path


def _handler_started(request: Request[Any, Any, Any], exc: Exception) -> bool:
    """Whether ``exc`` went through the route's handler function: Litestar parses, validates and
    authenticates before it calls the handler, so a traceback without its frame never reached it."""
    handler = request.scope.get("route_handler")
    code = getattr(inspect.unwrap(handler.fn), "__code__", None) if handler is not None else None
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is code:
            return True
        frame = frame.tb_next
    return False


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Litestar's exception handler for every route: ``render_problem`` as a response."""
    if not _handler_started(request, exc):
        request.scope[REFUSED_UNSTARTED] = True  # type: ignore[literal-required]
    status, body, headers = render_problem(exc, request.url.path, request.app.request_max_body_size)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
