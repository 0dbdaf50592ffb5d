"""Observability: /metrics counts exactly what happened, /readyz follows the database (Redis only degrades it)
(throwaway servers, stopped and started), the worker's own listener, and JSON logs that carry
ids but never a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import gateway.tracing
from gateway.app import create_app
from gateway.ingest.service import observe
from gateway.logs import JsonFormatter
from gateway.migrate import upgrade_async
from gateway.probes import serve_probes
from gateway.tracing import current_span, current_traceparent, install, start_spans
from tenants.sources.directory import SourceKey
from tests.conftest import OPERATOR_KEY, Stack, ingest_path, make_settings, new_source, new_tenant
from tests.support.client import AppClient
from tests.support.receiver import Script, Server, wait_until
from tests.support.services import ThrowawayPostgres, ThrowawayRedis, free_port
from tests.support.stripe_events import signed_stripe, stripe_event


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in found.items() if n == name and labels.items() <= dict(ls).items())


async def _scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await stack.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    documented = stack.client.app.openapi_schema.to_schema()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert response.headers["content-type"].count("charset") == 1
    assert [response.headers["content-type"]] == [f"{media}; charset=utf-8" for media in documented]  # as documented
    return samples(response.text)


async def test_metrics_count_exactly_what_ingest_and_delivery_did(stack_factory) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = await stack_factory(max_body_bytes=4096)
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    labels = {"tenant": tenant.id, "provider": "stripe"}
    before = await _scrape(stack)
    async with Server(Script()) as receiver:
        await stack.endpoint(tenant, receiver.url)
        events = [stripe_event() for _ in range(3)]
        for event in events:
            await stack.ingest(source, event)
        await stack.ingest(source, events[0])  # a provider retry
        body, headers = signed_stripe(stripe_event(), "whsec_not_the_secret")
        assert (await stack.client.post(ingest_path(source), content=body, headers=headers)).status_code == 400
        assert (await stack.client.post("/ingest/no-such-token", content=b"{}")).status_code == 404
        assert (await stack.client.post(ingest_path(source), content=b"x" * 5000)).status_code == 413
        await stack.settled(tenant, 3)
        [stored] = (await stack.client.get("/api/v1/events?limit=1", headers=tenant.auth)).json()["data"]
        assert (await stack.client.post(f"/api/v1/events/{stored['id']}/replay", headers=tenant.auth)).status_code == 202
        await stack.settled(tenant, 4)
        await asyncio.sleep(0.2)
    after = await _scrape(stack)

    def delta(name: str, **wanted: str) -> float:
        return value(after, name, **wanted) - value(before, name, **wanted)

    assert delta("hookgate_ingest_requests_total", outcome="accepted", **labels) == 3
    assert delta("hookgate_ingest_requests_total", outcome="duplicate", **labels) == 1
    assert delta("hookgate_ingest_requests_total", outcome="bad_signature", **labels) == 1
    assert delta("hookgate_ingest_requests_total", outcome="unknown_source") == 1
    assert delta("hookgate_ingest_requests_total", outcome="too_large") == 1
    assert delta("hookgate_ingest_duration_seconds_count") == 7
    assert delta("hookgate_delivery_attempts_total", tenant=tenant.id, outcome="success", status_class="2xx") == 4
    assert delta("hookgate_deliveries_total", tenant=tenant.id, outcome="succeeded") == 4
    assert delta("hookgate_delivery_lag_seconds_count") == 3  # the replay is not received → delivered lag
    assert delta("hookgate_requests_total", path="/api/v1/endpoints", method="POST") == 1  # by route template
    # Ingest is answered in front of Litestar's router (gateway/ingest/fast_path.py), so its per-route
    # HTTP metrics count only the one request the router answered (the 413 declared over the limit).
    assert delta("hookgate_requests_total", path="/ingest/{token}") == 1
    assert ("hookgate_pending_deliveries", (("priority", "critical"),)) in after  # set by the sweeps


@pytest.mark.slow
async def test_readyz_follows_postgres_and_redis_going_down_and_back(throwaway_postgres: ThrowawayPostgres, throwaway_redis: ThrowawayRedis) -> None:
    pg, redis_server = throwaway_postgres, throwaway_redis
    await upgrade_async(pg.url)
    app = create_app(make_settings(pg.url, redis_server.url))
    async with AppClient(app) as client:

        async def ready() -> tuple[int, dict[str, Any]]:
            response = await client.get("/readyz")
            return response.status_code, response.json()

        assert await ready() == (200, {"status": "ready", "checks": {"database": "ok", "redis": "ok"}})
        await asyncio.to_thread(redis_server.stop)  # ingest goes on without Redis: still in service
        assert await ready() == (200, {"status": "degraded", "checks": {"database": "ok", "redis": "unreachable"}})
        await asyncio.to_thread(redis_server.start)
        assert (await ready())[0] == 200
        await asyncio.to_thread(pg.stop)
        status, body = await ready()
        assert status == 503 and body["checks"]["database"] == "unreachable"
        assert body["type"].endswith("/not-ready")
        await asyncio.to_thread(pg.start)
        for _ in range(50):  # the pool notices the restart on its next checkout
            if (await ready())[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert await ready() == (200, {"status": "ready", "checks": {"database": "ok", "redis": "ok"}})
        assert (await client.get("/healthz")).status_code == 200


async def test_the_worker_listener_answers_metrics_and_probes() -> None:
    checks = {"database": "ok"}

    async def readiness() -> dict[str, str]:
        return dict(checks)

    port = free_port()
    server = await serve_probes("127.0.0.1", port, readiness)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200 and "hookgate_delivery_attempts_total" in metrics.text
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.get("/readyz")).status_code == 200
            checks["redis"] = "unreachable"  # deliveries go on from the database: ready, degraded (a rollout is not held up)
            degraded = await http.get("/readyz")
            assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
            checks["database"] = "unreachable"
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503 and not_ready.json()["checks"] == {"database": "unreachable", "redis": "unreachable"}
            assert (await http.get("/nope")).status_code == 404
    finally:
        server.close()
        await server.wait_closed()


async def test_logs_are_json_lines_with_ids_and_no_secret(stack: Stack) -> None:
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)  # stored events log at DEBUG
    try:
        tenant = await new_tenant(stack.client)
        source = await new_source(stack.client, tenant)
        async with Server(Script([(500, {}, 0.0), (200, {}, 0.0)])) as receiver:
            endpoint = await stack.endpoint(tenant, receiver.url)
            rotated = (await stack.client.post(f"/api/v1/endpoints/{endpoint['id']}/rotate-secret", json={}, headers=tenant.auth)).json()
            event_id = await stack.ingest(source)
            body, headers = signed_stripe(stripe_event(), "whsec_" + "A" * 32)
            await stack.client.post(ingest_path(source), content=body, headers=headers)  # a bad signature
            await stack.settled(tenant, 1)
            await wait_until(lambda: '"status_code":200' in captured.getvalue(), what="the logged success")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert any(line["message"] == "ingest" and line["outcome"] == "accepted" and line["tenant_id"] == tenant.id for line in lines)
    assert any(line["message"] == "ingest" and line["outcome"] == "bad_signature" and line["level"] == "info" for line in lines)
    attempts = [line for line in lines if line["message"] == "attempt"]
    assert {(line["status_code"], line["level"]) for line in attempts} >= {(500, "info"), (200, "debug")}  # a success: DEBUG
    assert all(line["tenant_id"] == tenant.id for line in attempts)
    text = captured.getvalue()
    secrets = [source["secret"], endpoint["secret"], rotated["secret"], tenant.api_key, OPERATOR_KEY, stack.settings.secret_key]
    assert not [secret for secret in secrets if secret and secret in text]
    assert event_id  # the flow did run end to end


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """The SDK's in-memory exporter behind the process-wide tracer provider (set once per session)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(provider)
    return exporter


async def test_one_trace_links_ingest_and_every_delivery_attempt(stack: Stack, spans: InMemorySpanExporter) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(503, {}, 0.0), (200, {}, 0.0)])) as receiver:
        endpoint = await stack.endpoint(tenant, receiver.url)
        spans.clear()
        event_id = await stack.ingest(source)
        [delivery] = await stack.settled(tenant, 1)
    attempts = (await stack.client.get(f"/api/v1/deliveries/{delivery['id']}/attempts", headers=tenant.auth)).json()["data"]
    assert [a["status_code"] for a in attempts] == [503, 200]

    finished = spans.get_finished_spans()
    [ingest] = [s for s in finished if s.name == "ingest" and s.attributes.get("hookgate.event_id") == event_id]
    trace_id = ingest.context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    names = sorted(s.name for s in in_trace)
    assert names == sorted(["ingest", "verify", "store", "enqueue", "delivery.attempt", "delivery.attempt"])
    delivery_spans = [s for s in in_trace if s.name == "delivery.attempt"]
    assert all(s.attributes["hookgate.endpoint_id"] == endpoint["id"] for s in delivery_spans)
    assert {s.attributes["http.response.status_code"] for s in delivery_spans} == {503, 200}
    assert {a["trace_id"] for a in attempts} == {format(trace_id, "032x")}  # the attempt records name the trace
    recorded = json.dumps([dict(s.attributes or {}) for s in finished])
    assert source["secret"] not in recorded and endpoint["secret"] not in recorded and tenant.api_key not in recorded


@pytest.mark.parametrize(
    ("level", "logged"), [(logging.INFO, ["bad_signature", "error"]), (logging.DEBUG, ["accepted", "duplicate", "bad_signature", "error"])]
)
def test_stored_events_log_at_debug_and_refusals_at_info(caplog: pytest.LogCaptureFixture, level: int, logged: list[str]) -> None:
    """One line per event under load would be the event log again: stored events only at DEBUG."""
    source = SourceKey(id=uuid.uuid4(), tenant_id=uuid.uuid4(), provider="stripe", secrets=(), priorities={}, limits={})
    with caplog.at_level(level, logger="hookgate.ingest"):
        for outcome in ("accepted", "duplicate", "bad_signature", "error"):
            observe(source, outcome, time.perf_counter())
    assert [record.outcome for record in caplog.records if record.name == "hookgate.ingest"] == logged


def test_no_span_is_built_while_no_tracer_provider_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's proxy would build a non-recording span per call; the helpers build nothing, and
    what they hand back records nothing and carries no trace."""
    monkeypatch.setattr(gateway.tracing, "_installed", False)
    with current_span("ingest", kind=trace.SpanKind.SERVER) as span:
        assert span is trace.INVALID_SPAN and not span.is_recording()
        assert current_traceparent() is None
    assert start_spans("enqueue", ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]) == []


@pytest.mark.parametrize(("env", "expected"), [({"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}, "True"), ({}, "False")])
def test_a_provider_set_before_hookgate_is_imported_is_traced_to(env: dict[str, str], expected: str) -> None:
    """``opentelemetry-instrument`` and ``OTEL_PYTHON_TRACER_PROVIDER`` install theirs before the app
    is imported; ``tracing()`` holds its answer, so it must have asked at import."""
    environment = {k: v for k, v in os.environ.items() if k != "OTEL_PYTHON_TRACER_PROVIDER"} | env
    code = "from gateway.tracing import tracing; print(tracing())"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


def test_spans_are_recorded_once_a_tracer_provider_is_installed(spans: InMemorySpanExporter) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with current_span("ingest") as span:
        assert span.is_recording() and current_traceparent() is not None
    for started in start_spans("enqueue", [parent]):
        started.end()
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert {"ingest", "enqueue"} <= finished.keys()
    assert format(finished["enqueue"].context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
