"""The management API fuzzed from its own OpenAPI schema (schemathesis): no 5xx for anything a
client can send, and responses conform to the schema the app publishes. Plus the regression the
fuzzing found: deeply nested JSON was a 500 on every JSON route (now a 400 problem)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient
from schemathesis import checks

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import OPERATOR_KEY, make_settings


@pytest.fixture
def backend() -> str:
    return "postgres"


def _schema_document() -> dict[str, Any]:
    """The published schema, from an app whose services are never contacted (collection time)."""
    app = create_app(make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/none", "redis://127.0.0.1:1/0"))
    return app.openapi_schema.to_schema()


schema = schemathesis.openapi.from_dict(_schema_document()).include(path_regex="^/api/")


@pytest.fixture
def live(settings: Settings) -> Iterator[tuple[TestClient[Litestar], dict[str, str]]]:
    """The app on a real database, and a tenant whose key the fuzzer sends."""
    with TestClient(create_app(settings)) as client:
        tenant = client.post("/api/v1/tenants", json={"name": "Fuzz"}, headers={"authorization": f"Bearer {OPERATOR_KEY}"}).json()
        yield client, {"authorization": f"Bearer {tenant['api_key']}"}


# No 5xx, and every response as documented: its status code (errors are the ``default`` response),
# its content type (application/problem+json for every error) and its body's schema.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance]


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_responses_conform(case: Any, live: tuple[TestClient[Litestar], dict[str, str]]) -> None:
    client, tenant = live
    auth = {"authorization": f"Bearer {OPERATOR_KEY}"} if case.path.startswith("/api/v1/tenants") else tenant
    kwargs = case.as_transport_kwargs(headers=auth)
    kwargs.pop("cookies", None)  # the API takes none
    if isinstance(kwargs.get("data"), bytes | str):  # raw bodies are httpx's content=
        kwargs["content"] = kwargs.pop("data")
    response = client.request(**kwargs)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400 and case.method != "OPTIONS":
        assert response.headers["content-type"].startswith("application/problem+json"), response.text


def test_deeply_nested_json_is_a_400_on_every_route_that_takes_a_body(live: tuple[TestClient[Litestar], dict[str, str]]) -> None:
    """Regression: msgspec raises RecursionError past its depth limit, which Litestar left as a 500."""
    client, tenant = live
    depth = 5_000
    body = b'{"name": ' + b"[" * depth + b"]" * depth + b"}"
    routes = [
        (method, route.path)
        for route in client.app.routes
        if isinstance(route, HTTPRoute) and route.path.startswith("/api/")
        for handler in route.route_handlers
        if "data" in handler.parsed_fn_signature.parameters  # the handlers that take a JSON body
        for method in handler.http_methods
    ]
    assert len(routes) >= 10
    for method, template in routes:
        path = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", template)
        auth = {"authorization": f"Bearer {OPERATOR_KEY}"} if template.startswith("/api/v1/tenants") else tenant
        response = client.request(method, path, content=body, headers={**auth, "content-type": "application/json"})
        assert response.status_code == 400, (method, template, response.status_code, response.text[:200])
        assert response.json()["detail"] == "JSON is malformed: nested too deeply"


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/api/v1/sources", {"json": {"name": "a\u0000b", "provider": "stripe"}}),
        ("POST", "/api/v1/endpoints", {"json": {"url": "https://example.com/hook", "description": "\u0000"}}),
        ("GET", "/api/v1/events", {"params": {"type": "charge.\u0000"}}),
    ],
)
def test_a_nul_character_is_a_400_wherever_it_comes_in(
    live: tuple[TestClient[Litestar], dict[str, str]], method: str, path: str, kwargs: dict[str, Any]
) -> None:
    """Regression found by the fuzzer: Postgres text cannot hold NUL, and the insert's error was a 500."""
    client, tenant = live
    response = client.request(method, path, headers=tenant, **kwargs)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("invalid-text")
    assert client.get(path, headers=tenant).json()["data"] == []  # nothing was stored
