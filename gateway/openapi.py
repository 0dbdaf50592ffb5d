"""The published OpenAPI document, finished where Litestar's generation stops, so that generated
clients send the key and know the errors: a bearer security scheme (none on ingest and the probes),
every error as RFC 9457 problem details (a ``default`` response: Litestar declares only a 400, as
its own JSON shape), the list routes' ``limit`` bounds, and which request bodies may be left out.

The document is also held to: an API request with a query parameter its operation does not declare
is a 400 (``?stauts=dead`` would otherwise list everything, unfiltered, with no sign of the typo)."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Reference, Schema, SecurityScheme
from litestar.routes import HTTPRoute

from gateway.pagination import MAX_LIMIT
from gateway.problems import PROBLEM_JSON, Problem

_BEARER = "bearer"
_PROBLEM = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 9457 problem details; some kinds add fields (errors, reason, retry_after, …).",
    required=["type", "title", "status", "detail"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, description="A URI naming the kind of problem"),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING, description="What was wrong, in words"),
        "instance": Schema(type=OpenAPIType.STRING),
    },
)
_ERROR = OpenAPIResponse(
    description="An error, as problem details (400 invalid input, 401 no or a wrong key, 404 not found or another tenant's, "
    "409 conflict, 413 too large, 422 refused, 429 over a limit, 503 a backing service is down)",
    content={PROBLEM_JSON: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))},
)
_UNAUTHENTICATED = ("/ingest/", "/healthz", "/readyz", "/metrics")  # the ingest token is the path's
_QUERY_NAMES = "hookgate_query_names"  # app state: operation id -> the query parameters it declares


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Hookgate",
        version="0.1.0",
        path="/schema",
        security=[{_BEARER: []}],
        components=Components(
            security_schemes={
                _BEARER: SecurityScheme(
                    type="http", scheme="bearer", description="A tenant's API key (hgk_…); the operator key on /api/v1/tenants"
                )
            },
            schemas={"Problem": _PROBLEM},
        ),
    )


def complete(app: Litestar) -> None:
    """Finish the app's document in place, once, before anything has read it."""
    optional_bodies = {
        handler.operation_id
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if (data := handler.parsed_fn_signature.parameters.get("data")) is not None and data.has_default
    }
    declared: dict[str, frozenset[str]] = {}
    for path, item in (app.openapi_schema.paths or {}).items():
        for operation in (item.get, item.put, item.post, item.delete, item.patch):
            if operation is None:
                continue
            responses: dict[str, Any] = operation.responses or {}
            responses.pop("400", None)
            responses["default"] = _ERROR
            operation.responses = responses
            if path.startswith(_UNAUTHENTICATED):
                operation.security = []
            for parameter in operation.parameters or []:
                if getattr(parameter, "name", None) == "limit" and isinstance(parameter.schema, Schema):
                    parameter.schema.minimum, parameter.schema.maximum = 1, MAX_LIMIT
            if operation.request_body is not None and operation.operation_id in optional_bodies:
                operation.request_body.required = False
            declared[operation.operation_id or ""] = frozenset(
                parameter.name for parameter in operation.parameters or [] if getattr(parameter, "param_in", None) == "query"
            )
    app.state[_QUERY_NAMES] = declared


def declared_query_only(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """A guard for the API: a query parameter the operation does not declare is the client's mistake."""
    if not connection.url.path.startswith("/api/") or connection.scope["method"] == "OPTIONS":  # Litestar's own, undocumented
        return
    known = connection.app.state[_QUERY_NAMES].get(handler.operation_id, frozenset())
    if unknown := sorted(set(connection.query_params) - known):
        raise Problem(400, "unknown-parameter", f"unknown query parameter {', '.join(unknown)}; this route takes "
                      f"{', '.join(sorted(known)) or 'none'}", parameters=unknown)
