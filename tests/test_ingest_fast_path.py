"""The ingest fast path (``gateway/ingest/fast_path.py``) answers as the Litestar route does.

Requests with a ``Content-Length`` within the limit are answered in front of the router; the rest
reach the ``ingest`` route. The same request sent to each (the router reached directly, as a
chunked body would reach it) must get the same receipt or the same problem details, and what the
router never saw must not show in its per-route metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.ingest.controller import INGEST_STATE
from gateway.ingest.fast_path import IngestFastPath
from gateway.metrics import exposition
from tests.conftest import TenantHandle, ingest_path, new_source
from tests.support.stripe_events import signed_stripe, stripe_event

Client = AsyncTestClient[Litestar]


@contextmanager
def _routed(app: Litestar) -> Iterator[None]:
    """Requests sent meanwhile go straight to Litestar's router, past the fast path."""
    fast_path = app.asgi_handler
    assert isinstance(fast_path, IngestFastPath)
    app.asgi_handler = fast_path.router
    try:
        yield
    finally:
        app.asgi_handler = fast_path


async def _routed_ingests(client: Client) -> float:
    """Ingest requests the Litestar router answered, from its per-route HTTP metrics."""
    scraped = (await client.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(scraped)
        if family.name == "hookgate_requests"
        for sample in family.samples
        if sample.name == "hookgate_requests_total" and sample.labels.get("path") == "/ingest/{token}"
    )


async def test_both_paths_store_and_answer_alike_and_only_the_router_counts_its_own(
    app: Litestar, client: Client, tenant: TenantHandle
) -> None:
    source = await new_source(client, tenant)
    routed_before = await _routed_ingests(client)
    fast_body, fast_headers = signed_stripe(stripe_event(), source["secret"])
    routed_body, routed_headers = signed_stripe(stripe_event(), source["secret"])

    fast = await client.post(ingest_path(source), content=fast_body, headers=fast_headers)
    with _routed(app):
        routed = await client.post(ingest_path(source), content=routed_body, headers=routed_headers)
        again = await client.post(ingest_path(source), content=fast_body, headers=fast_headers)
    repeat = await client.post(ingest_path(source), content=routed_body, headers=routed_headers)

    assert [r.status_code for r in (fast, routed, again, repeat)] == [200] * 4
    assert [r.headers["content-type"] for r in (fast, routed)] == ["application/json"] * 2
    assert set(fast.json()) == set(routed.json()) == {"id", "duplicate"}
    assert again.json() == {"id": fast.json()["id"], "duplicate": True}  # the router sees what the fast path stored
    assert repeat.json() == {"id": routed.json()["id"], "duplicate": True}  # and the other way round
    stored = (await client.get("/api/v1/events?limit=10", headers=tenant.auth)).json()["data"]
    assert {e["id"] for e in stored} == {fast.json()["id"], routed.json()["id"]}
    assert await _routed_ingests(client) - routed_before == 2  # the two routed requests, neither fast one


@pytest.mark.parametrize(
    ("path", "secret"),
    [("own", "whsec_not_the_secret"), ("/ingest/no-such-token", None)],
    ids=["bad-signature", "unknown-source"],
)
async def test_a_problem_reads_the_same_on_both_paths(
    app: Litestar, client: Client, tenant: TenantHandle, path: str, secret: str | None
) -> None:
    source = await new_source(client, tenant)
    body, headers = signed_stripe(stripe_event(), secret or source["secret"])
    url = ingest_path(source) if path == "own" else path
    fast = await client.post(url, content=body, headers=headers)
    with _routed(app):
        routed = await client.post(url, content=body, headers=headers)
    assert fast.status_code == routed.status_code >= 400
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/problem+json"
    assert fast.json() == routed.json()


async def test_an_unexpected_error_is_an_opaque_logged_500(
    app: Litestar, client: Client, tenant: TenantHandle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = await new_source(client, tenant)

    async def broken(*_args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state[INGEST_STATE], "ingest", broken)
    body, headers = signed_stripe(stripe_event(), source["secret"])
    answer = await client.post(ingest_path(source), content=body, headers=headers)
    assert answer.status_code == 500
    assert answer.json()["type"].endswith("/internal-error") and "a bug" not in answer.text
    assert any(record.exc_info and "a bug" in str(record.exc_info[1]) for record in caplog.records)
    token = ingest_path(source).rsplit("/", 1)[1]
    ours = [record for record in caplog.records if record.name.startswith("hookgate")]
    assert ours and not any(token in record.getMessage() for record in ours)  # a credential


async def test_a_client_gone_before_its_body_arrived_stores_nothing() -> None:
    class _Unused:
        async def ingest(self, *_args: Any) -> None:
            raise AssertionError("nothing may be ingested for a client that went away")

    async def router(*_args: Any) -> None:
        raise AssertionError("a fast-path request must not reach the router")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    fast_path = IngestFastPath(router, _Unused(), max_body=1024)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "path": "/ingest/tok", "headers": [(b"content-length", b"10")]}
    await fast_path(scope, receive, send)  # type: ignore[arg-type]
    assert sent == []


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/ingest/tok", [(b"content-length", b"2")]),
        ("POST", "/ingest/tok/more", [(b"content-length", b"2")]),
        ("POST", "/ingest/", [(b"content-length", b"2")]),
        ("POST", "/ingest/tok", []),
        ("POST", "/ingest/tok", [(b"content-length", b"2"), (b"content-length", b"3")]),
        ("POST", "/ingest/tok", [(b"content-length", b"-1")]),
        ("POST", "/ingest/tok", [(b"content-length", b"1025")]),
    ],
    ids=["other-method", "more-segments", "no-token", "no-length", "two-lengths", "bad-length", "over-the-limit"],
)
async def test_what_the_fast_path_does_not_take_goes_to_the_router(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> None:
    routed: list[str] = []

    async def router(scope: dict[str, Any], *_args: Any) -> None:
        routed.append(scope["path"])

    fast_path = IngestFastPath(router, object(), max_body=1024)  # type: ignore[arg-type]
    await fast_path({"type": "http", "method": method, "path": path, "headers": headers}, None, None)  # type: ignore[arg-type]
    assert routed == [path]


async def test_a_client_that_leaves_mid_body_is_neither_an_ingest_error_nor_a_5xx(app: Litestar, client: Client, tenant: TenantHandle) -> None:
    """A chunked upload cut short by its client once counted as outcome="error" and a 500: anyone could
    page the on-call (HookgateIngestErrorRatioHigh) without even a token."""
    source = await new_source(client, tenant)

    def counted() -> dict[str, float]:
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(exposition().decode()):
            for sample in family.samples:
                if sample.name == "hookgate_ingest_requests_total" and sample.labels["outcome"] == "error":
                    found["error"] = found.get("error", 0.0) + sample.value
                if sample.name == "hookgate_requests_total" and sample.labels.get("path") == "/ingest/{token}":
                    found[sample.labels["status_code"]] = found.get(sample.labels["status_code"], 0.0) + sample.value
        return found

    before = counted()
    messages = iter([{"type": "http.request", "body": b'{"id": "ev', "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": ingest_path(source), "raw_path": ingest_path(source).encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"transfer-encoding", b"chunked"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {}}
    await app(scope, receive, send)

    assert sent[0]["status"] == 400
    after = counted()
    assert after.get("error", 0.0) == before.get("error", 0.0)
    assert after.get("500", 0.0) == before.get("500", 0.0) and after.get("400", 0.0) == before.get("400", 0.0) + 1
