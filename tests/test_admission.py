"""Ingest admission: operator-set limits per tenant and priority, 429s that name the limit,
separate budgets per priority, usage per window, and the fail-open rule when Redis is down.

On Postgres the limiter is the Redis script; on SQLite (embedded) the in-process one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from gateway.admission.service import Admission
from gateway.limiter import MemoryLimiter, Rate, RedisLimiter
from gateway.problems import Problem
from tests.conftest import OPERATOR_KEY, TenantHandle, ingest_path, new_source, new_tenant
from tests.support.receiver import Script, Server, wait_until
from tests.support.services import ThrowawayRedis, free_port
from tests.support.stripe_events import signed_stripe, stripe_event

Client = AsyncTestClient[Litestar]
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}
CRITICAL, HIGH, NORMAL, LOW = "charge_succeeded", "subscription_created", "customer_updated", "product_created"

pytestmark = pytest.mark.usefixtures("redis_client")  # a flushed Redis for every test


async def _limit(client: Client, tenant: TenantHandle, **limits: Any) -> dict[str, Any]:
    response = await client.patch(f"/api/v1/tenants/{tenant.id}", json={"limits": limits}, headers=OPERATOR)
    assert response.status_code == 200, response.text
    return response.json()


async def _send(client: Client, source: dict[str, Any], fixture: str) -> Any:
    body, headers = signed_stripe(stripe_event(fixture), source["secret"])
    return await client.post(ingest_path(source), content=body, headers=headers)


async def _statuses(client: Client, source: dict[str, Any], fixture: str, count: int) -> list[int]:
    return [(await _send(client, source, fixture)).status_code for _ in range(count)]


# --- operator API -------------------------------------------------------------------------------


async def test_operator_sets_limits_partially_and_sees_the_effective_ones(client: Client, tenant: TenantHandle) -> None:
    shown = (await client.get(f"/api/v1/tenants/{tenant.id}", headers=OPERATOR)).json()
    assert shown["limits"]["critical"] == {"rate_per_second": 100.0, "burst": 500, "source": "default"}
    assert shown["limits"]["low"] == {"rate_per_second": 20.0, "burst": 100, "source": "default"}
    assert shown["delivery_concurrency"] == 16

    updated = await _limit(client, tenant, low={"rate_per_second": 2.5})
    assert updated["limits"]["low"] == {"rate_per_second": 2.5, "burst": 100, "source": "tenant"}
    assert updated["limits"]["critical"]["source"] == "default"

    updated = await _limit(client, tenant, low={"burst": 7}, critical={"rate_per_second": 1000, "burst": 2000})
    assert updated["limits"]["low"] == {"rate_per_second": 2.5, "burst": 7, "source": "tenant"}  # earlier field kept
    assert updated["limits"]["critical"] == {"rate_per_second": 1000.0, "burst": 2000, "source": "tenant"}

    response = await client.patch(f"/api/v1/tenants/{tenant.id}", json={"delivery_concurrency": 3}, headers=OPERATOR)
    assert response.json()["delivery_concurrency"] == 3 and response.json()["limits"]["low"]["burst"] == 7

    restored = await _limit(client, tenant, low=None)
    assert restored["limits"]["low"] == {"rate_per_second": 20.0, "burst": 100, "source": "default"}
    assert restored["limits"]["critical"]["source"] == "tenant" and restored["delivery_concurrency"] == 3
    fetched = (await client.get(f"/api/v1/tenants/{tenant.id}", headers=OPERATOR)).json()
    assert fetched["limits"] == restored["limits"]


async def test_concurrent_partial_updates_keep_each_others_limits(client: Client, tenant: TenantHandle) -> None:
    """Each PATCH merges into the stored overrides under a row lock: two at once both land."""
    for burst in range(1, 11):
        await asyncio.gather(_limit(client, tenant, low={"burst": burst}), _limit(client, tenant, critical={"burst": 1000 + burst}))
        limits = (await client.get(f"/api/v1/tenants/{tenant.id}", headers=OPERATOR)).json()["limits"]
        assert (limits["low"]["burst"], limits["critical"]["burst"]) == (burst, 1000 + burst)


@pytest.mark.parametrize(
    "body",
    [
        {"limits": {"urgent": {"burst": 1}}},
        {"limits": {"low": {"rate_per_second": 0}}},
        {"limits": {"low": {"rate_per_second": 1e-320}}},
        {"limits": {"low": {"burst": 0}}},
        {"limits": {"low": {"per_minute": 5}}},
        {"limits": {"low": "fast"}},
        {"delivery_concurrency": 0},
        {"quota": 5},
    ],
)
async def test_bad_limits_are_a_400_problem_and_change_nothing(client: Client, tenant: TenantHandle, body: dict[str, Any]) -> None:
    response = await client.patch(f"/api/v1/tenants/{tenant.id}", json=body, headers=OPERATOR)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json") and response.json()["detail"]
    shown = (await client.get(f"/api/v1/tenants/{tenant.id}", headers=OPERATOR)).json()
    assert {limit["source"] for limit in shown["limits"].values()} == {"default"} and shown["delivery_concurrency"] == 16


async def test_only_the_operator_sets_limits(client: Client, tenant: TenantHandle) -> None:
    path = f"/api/v1/tenants/{tenant.id}"
    assert (await client.patch(path, json={"limits": {"low": {"burst": 1}}}, headers=tenant.auth)).status_code == 401
    assert (await client.get(path, headers=tenant.auth)).status_code == 401
    missing = await client.patch(f"/api/v1/tenants/{uuid.uuid4()}", json={"limits": {}}, headers=OPERATOR)
    assert missing.status_code == 404


# --- admission at ingest ------------------------------------------------------------------------


async def test_over_the_limit_is_429_with_retry_after_naming_the_limit(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    await _limit(client, tenant, low={"rate_per_second": 0.2, "burst": 3})
    assert await _statuses(client, source, LOW, 3) == [200, 200, 200]
    refused = await _send(client, source, LOW)
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    body = refused.json()
    assert body["type"].endswith("/rate-limited") and body["priority"] == "low"
    assert body["limit"] == {"rate_per_second": 0.2, "burst": 3}
    assert "0.2/s" in body["detail"] and "burst of 3" in body["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 5 and body["retry_after"] == int(refused.headers["retry-after"])
    events = (await client.get("/api/v1/events?limit=100", headers=tenant.auth)).json()["data"]
    assert len(events) == 3  # the refused event was not stored


async def test_a_flood_of_low_events_leaves_critical_events_and_other_tenants_admitted(client: Client) -> None:
    flooder, neighbour = await new_tenant(client, "Flooder"), await new_tenant(client, "Neighbour")
    flood_source, neighbour_source = await new_source(client, flooder), await new_source(client, neighbour)
    for tenant in (flooder, neighbour):
        await _limit(client, tenant, low={"rate_per_second": 1, "burst": 5}, critical={"rate_per_second": 1, "burst": 20})

    async def flood() -> list[int]:
        return await _statuses(client, flood_source, LOW, 60)

    async def critical_and_neighbour() -> tuple[list[int], list[int]]:
        critical = await _statuses(client, flood_source, CRITICAL, 15)
        others = [
            *await _statuses(client, neighbour_source, LOW, 5),
            *await _statuses(client, neighbour_source, CRITICAL, 10),
            *await _statuses(client, neighbour_source, NORMAL, 10),
        ]
        return critical, others

    flooded, (critical, others) = await asyncio.gather(flood(), critical_and_neighbour())
    assert flooded.count(429) >= 50 and set(flooded) == {200, 429}  # the flood was mostly refused
    assert critical == [200] * 15  # while the flooder's own critical events all got in
    assert others == [200] * 25  # and the neighbour never noticed


async def test_duplicates_and_bad_signatures_do_not_bypass_the_limit(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    await _limit(client, tenant, normal={"rate_per_second": 0.1, "burst": 2})
    body, headers = signed_stripe(stripe_event(NORMAL), source["secret"])
    first = await client.post(ingest_path(source), content=body, headers=headers)
    again = await client.post(ingest_path(source), content=body, headers=headers)
    assert first.status_code == 200 and again.json()["duplicate"] is True
    assert (await _send(client, source, NORMAL)).status_code == 429  # the retry counted against the budget
    forged = await client.post(ingest_path(source), content=body, headers={"stripe-signature": "t=1,v1=00"})
    assert forged.status_code == 400  # a bad signature is rejected before admission, and costs nothing


# --- usage --------------------------------------------------------------------------------------


async def test_usage_shows_admitted_and_refused_per_priority_and_the_limits(client: Client) -> None:
    tenant, other = await new_tenant(client), await new_tenant(client, "Other")
    source, other_source = await new_source(client, tenant), await new_source(client, other)
    await _limit(client, tenant, low={"rate_per_second": 0.1, "burst": 2})
    assert await _statuses(client, source, LOW, 5) == [200, 200, 429, 429, 429]
    assert await _statuses(client, source, CRITICAL, 3) == [200] * 3
    assert await _statuses(client, other_source, HIGH, 4) == [200] * 4

    response = await client.get("/api/v1/usage", headers=tenant.auth)
    assert response.status_code == 200, response.text
    usage = response.json()
    assert usage["window_seconds"] == 3600
    assert usage["current"]["admitted"] == {"critical": 3, "high": 0, "normal": 0, "low": 2}
    assert usage["current"]["refused"] == {"critical": 0, "high": 0, "normal": 0, "low": 3}
    assert usage["previous"]["admitted"] == {"critical": 0, "high": 0, "normal": 0, "low": 0}
    assert usage["limits"]["low"] == {"rate_per_second": 0.1, "burst": 2, "source": "tenant"}
    assert usage["delivery_concurrency"] == 16
    assert usage["current"]["start"] == usage["previous"]["end"] and usage["current"]["start"] < usage["current"]["end"]

    other_usage = (await client.get("/api/v1/usage", headers=other.auth)).json()
    assert other_usage["current"]["admitted"]["high"] == 4 and other_usage["current"]["refused"]["low"] == 0
    assert (await client.get("/api/v1/usage")).status_code == 401


async def test_usage_windows_roll_over_and_limits_reset_on_schedule() -> None:
    """The service on a controlled clock: a window's counts move to "previous", the budget refills."""
    now = [7200.0]
    admission = Admission(MemoryLimiter(clock=lambda: now[0]), window_seconds=60, clock=lambda: now[0])
    tenant, rate = uuid.uuid4(), Rate(per_second=0.5, burst=2)
    outcomes = []
    for _ in range(3):
        try:
            await admission.admit(tenant, "normal", rate)
            outcomes.append("admitted")
        except Problem as problem:
            outcomes.append(f"{problem.status_code} after {problem.headers['Retry-After']}")
    assert outcomes == ["admitted", "admitted", "429 after 2"]
    now[0] += 2.0  # exactly the Retry-After: one more fits
    await admission.admit(tenant, "normal", rate)
    now[0] += 60
    current, previous = await admission.usage(tenant)
    assert previous.start == 7200 and current.start == 7260
    assert previous.admitted["normal"] == 3 and previous.refused["normal"] == 1
    assert current.admitted["normal"] == 0
    now[0] += 120
    current, previous = await admission.usage(tenant)
    assert previous.admitted["normal"] == 0  # older windows are forgotten


# --- Redis down ---------------------------------------------------------------------------------


def _admissions(priority: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("hookgate_admission_total", {"priority": priority, "outcome": outcome}) or 0.0


async def test_with_the_limiter_unreachable_what_the_sender_would_not_send_again_is_admitted() -> None:
    """GitHub does not redeliver a refused request: a 503 for an outage of ours would lose the event."""
    redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)  # nothing listens there
    admission = Admission(RedisLimiter(redis), window_seconds=60)
    opened, closed = _admissions("normal", "failed_open"), _admissions("normal", "failed_closed")
    try:
        await admission.admit(uuid.uuid4(), "normal", Rate(per_second=1, burst=1), redelivered=False)
        with pytest.raises(Problem) as refused:
            await admission.admit(uuid.uuid4(), "normal", Rate(per_second=1, burst=1))
    finally:
        await redis.aclose()
    assert refused.value.status_code == 503 and refused.value.kind == "limiter-unavailable"
    assert (_admissions("normal", "failed_open"), _admissions("normal", "failed_closed")) == (opened + 1, closed + 1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres"])
async def test_redis_stopped_during_ingest_critical_events_are_stored_and_delivered(stack_factory: Callable[..., Any]) -> None:
    with ThrowawayRedis() as redis_server:
        stack = await stack_factory(redis_url=redis_server.url)
        tenant = await new_tenant(stack.client)
        source = await new_source(stack.client, tenant)
        await _limit(stack.client, tenant, normal={"rate_per_second": 0.1, "burst": 1})
        async with Server(Script()) as receiver:
            await stack.endpoint(tenant, receiver.url)
            assert await _statuses(stack.client, source, NORMAL, 2) == [200, 429]  # the limiter works
            await wait_until(lambda: len(receiver.requests) == 1, what="the first delivery")

            redis_server.stop()
            opened, closed = _admissions("critical", "failed_open"), _admissions("normal", "failed_closed")
            critical = [stripe_event(CRITICAL) for _ in range(5)]
            for event in critical:
                body, headers = signed_stripe(event, source["secret"])
                assert (await stack.client.post(ingest_path(source), content=body, headers=headers)).status_code == 200
            assert await _statuses(stack.client, source, HIGH, 2) == [200, 200]
            refused = await _send(stack.client, source, NORMAL)
            assert refused.status_code == 503 and refused.json()["type"].endswith("/limiter-unavailable")
            assert refused.headers["retry-after"]
            assert _admissions("critical", "failed_open") == opened + 5 and _admissions("normal", "failed_closed") == closed + 1

            # No doorbell, breaker or limiter: the worker finds the stored events in the database.
            await wait_until(lambda: len(receiver.requests) == 8, timeout=30, what="deliveries with Redis down")
            delivered = {json.loads(r.body)["id"] for r in receiver.requests}
            assert {event["id"] for event in critical} <= delivered

            redis_server.start()  # empty (no persistence): the budget starts afresh
            statuses = [(await _send(stack.client, source, NORMAL)).status_code for _ in range(3)]
            assert 200 in statuses and 429 in statuses and 500 not in statuses  # limited again, not failing
