"""The delivery engine end to end: real receivers, real Postgres + Redis (with a worker) and
embedded SQLite (in-app dispatcher). Schedules and cool-downs are shortened by settings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook

from gateway.worker import run_worker
from tests.conftest import Stack, make_settings, new_source, new_tenant
from tests.support.proxy import PartitionProxy
from tests.support.receiver import Received, Script, Server, wait_until
from tests.support.services import free_port
from tests.support.stripe_events import stripe_event

Client = AsyncTestClient[Litestar]


def _verify(endpoint_secret: str, request: Received) -> dict[str, Any]:
    """The receiver's side: the official Standard Webhooks library must accept the delivery."""
    return Webhook(endpoint_secret).verify(request.body, request.headers)


async def test_delivered_signed_to_matching_endpoints_only(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script()) as a, Server(Script()) as b, Server(Script()) as other:
        ep_a = await stack.endpoint(tenant, f"{a.url}/hook")
        ep_b = await stack.endpoint(tenant, f"{b.url}/hook", event_types=["charge.*"])
        await stack.endpoint(tenant, f"{other.url}/hook", event_types=["invoice.paid"])
        event = stripe_event("charge_succeeded")
        event_id = await stack.ingest(source, event)
        await wait_until(lambda: a.requests and b.requests, what="both receivers")
        for server, endpoint in ((a, ep_a), (b, ep_b)):
            request = server.requests[0]
            assert _verify(endpoint["secret"], request)["id"] == event["id"]
            assert request.body == json.dumps(event).encode()  # the original bytes
            assert request.headers["content-type"] == "application/json"
            assert "hookgate" in request.headers["user-agent"].lower()
        await stack.settled(tenant, 2)
        assert other.requests == []
        detail = (await stack.client.get(f"/api/v1/events/{event_id}", headers=tenant.auth)).json()
        assert sorted(d["endpoint_id"] for d in detail["deliveries"]) == sorted([ep_a["id"], ep_b["id"]])
        assert all(d["status"] == "succeeded" and d["attempts"] == 1 for d in detail["deliveries"])


async def test_fails_twice_then_succeeds_with_a_stable_webhook_id(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(500, {}, 0), (502, {}, 0), (200, {}, 0)])) as receiver:
        endpoint = await stack.endpoint(tenant, receiver.url)
        await stack.ingest(source)
        [delivery] = await stack.settled(tenant, 1)
        assert delivery["attempts"] == 3 and delivery["last_status_code"] == 200
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
        assert all(_verify(endpoint["secret"], r) for r in receiver.requests)
        attempts = (await stack.client.get(f"/api/v1/deliveries/{delivery['id']}/attempts", headers=tenant.auth)).json()["data"]
        assert [a["status_code"] for a in attempts] == [500, 502, 200]
        assert attempts[0]["response_excerpt"] == "ok" and attempts[0]["error"] == "HTTP 500"


async def test_always_failing_goes_dead_and_delivery_dead_is_announced(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(500, {}, 0)])) as broken, Server(Script()) as ops:
        bad = await stack.endpoint(tenant, broken.url, event_types=["*", "delivery.dead"])
        await stack.endpoint(tenant, ops.url, event_types=["delivery.*"])
        await stack.ingest(source)
        [dead] = await stack.settled(tenant, 1, status="dead")
        assert dead["endpoint_id"] == bad["id"] and dead["attempts"] == 3 and dead["last_status_code"] == 500
        assert len(broken.requests) == 3
        await wait_until(lambda: ops.requests, what="delivery.dead at the subscribed endpoint")
        announced = json.loads(ops.requests[0].body)
        assert announced["type"] == "delivery.dead" and announced["data"]["delivery_id"] == dead["id"]
        await asyncio.sleep(0.5)
        assert len(broken.requests) == 3  # never to the endpoint that caused it


async def test_a_dead_notice_that_dies_is_not_announced_again(stack: Stack) -> None:
    """Two failing endpoints that both take ``delivery.dead``: each death would otherwise announce
    itself to the other, one notice after another without end."""
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(500, {}, 0)])) as first, Server(Script([(500, {}, 0)])) as second:
        await stack.endpoint(tenant, first.url, event_types=["*", "delivery.dead"])
        await stack.endpoint(tenant, second.url, event_types=["delivery.*"])
        event_id = await stack.ingest(source)
        dead = await stack.settled(tenant, 2, status="dead")
        notice = json.loads(second.requests[0].body)
        assert notice["type"] == "delivery.dead" and notice["data"]["event_id"] == event_id
        await asyncio.sleep(1.0)  # a third notice would be due at once: it is made in the death's own transaction
        assert len(await stack.deliveries(tenant)) == len(dead) == 2
        assert len(first.requests) == len(second.requests) == 3


async def test_a_receiver_redirecting_to_undecodable_bytes_still_gets_its_attempts_recorded(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(302, {"location": "http://x/\xff\xfe"}, 0)])) as receiver:
        await stack.endpoint(tenant, receiver.url)
        await stack.ingest(source)
        [dead] = await stack.settled(tenant, 1, status="dead")
        assert dead["attempts"] == 3 and len(receiver.requests) == 3 and "\ufffd" in dead["last_error"]


async def test_410_disables_the_endpoint(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(410, {}, 0)])) as gone:
        endpoint = await stack.endpoint(tenant, gone.url)
        await stack.ingest(source)
        [dead] = await stack.settled(tenant, 1, status="dead")
        assert dead["attempts"] == 1 and "410" in dead["last_error"]
        fetched = (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant.auth)).json()
        assert fetched["enabled"] is False


async def test_an_endpoint_is_disabled_and_announced_once_however_many_410s_it_answers(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(410, {}, 0.2)])) as gone, Server(Script()) as ops:
        endpoint = await stack.endpoint(tenant, gone.url, event_types=["charge.*"])
        await stack.endpoint(tenant, ops.url, event_types=["endpoint.disabled"])
        await asyncio.gather(*(stack.ingest(source, stripe_event("charge_succeeded")) for _ in range(5)))
        await stack.settled(tenant, 5, status="dead")
        await wait_until(lambda: ops.requests, what="endpoint.disabled")
        await asyncio.sleep(0.5)
        assert len(gone.requests) >= 2, "the 410s should overlap for this test to mean anything"
        announced = [json.loads(r.body) for r in ops.requests]
        assert [(a["type"], a["data"]["endpoint_id"]) for a in announced] == [("endpoint.disabled", endpoint["id"])]


async def test_429_retry_after_is_honoured(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(429, {"retry-after": "2"}, 0), (200, {}, 0)])) as receiver:
        await stack.endpoint(tenant, receiver.url)
        await stack.ingest(source)
        await stack.settled(tenant, 1)
        gap = receiver.requests[1].at - receiver.requests[0].at
        assert gap >= 1.8  # the schedule said 0.3 s; Retry-After said 2 s


@pytest.mark.parametrize(
    ("answer", "expected"),
    [((200, {}, 3.0), "timeout"), ((302, {"location": "http://127.0.0.1:9/x"}, 0), "not followed"), (None, "refused")],
)
async def test_network_failures_are_retried_and_recorded(stack: Stack, answer: Any, expected: str) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([answer or (200, {}, 0)])) as receiver:
        url = receiver.url if answer else f"http://127.0.0.1:{free_port()}/"
        await stack.endpoint(tenant, url)
        await stack.ingest(source)
        [dead] = await stack.settled(tenant, 1, status="dead")
    attempts = (await stack.client.get(f"/api/v1/deliveries/{dead['id']}/attempts", headers=tenant.auth)).json()["data"]
    assert len(attempts) == 3
    assert all(expected in a["error"] for a in attempts), attempts
    pages, cursor = [], None
    while True:  # one at a time, oldest first, the cursor carrying on where the last page ended
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = (await stack.client.get(f"/api/v1/deliveries/{dead['id']}/attempts", params=params, headers=tenant.auth)).json()
        pages += page["data"]
        if not (cursor := page["next_cursor"]):
            break
    assert [a["number"] for a in pages] == [1, 2, 3] and pages == attempts


async def test_circuit_breaker_opens_waits_probes_and_drains(stack_factory: Callable[..., Any]) -> None:
    stack = await stack_factory(retry_schedule="0,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2", breaker_cooldown_seconds=3.0, breaker_max_cooldown_seconds=6.0)
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    script = Script([(500, {}, 0)])
    async with Server(script) as receiver, Server(Script()) as ops:
        endpoint = await stack.endpoint(tenant, receiver.url)
        await stack.endpoint(tenant, ops.url, event_types=["endpoint.*"])
        for _ in range(5):
            await stack.ingest(source)
        await wait_until(lambda: len(receiver.requests) >= 3, what="three failures")
        await wait_until(lambda: any(json.loads(r.body)["type"] == "endpoint.circuit_opened" for r in ops.requests), what="opened")
        opened_at, seen = receiver.requests[2].at, len(receiver.requests)
        await asyncio.sleep(0.8)
        assert len(receiver.requests) == seen  # open: nothing reaches the receiver during the cool-down
        view = (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant.auth)).json()
        assert view["breaker"]["state"] == "open"

        script.answers = [(200, {}, 0)]
        await stack.settled(tenant, 5, timeout=30)
        probe = receiver.requests[seen]
        assert probe.at - opened_at >= 2.5  # the first request after opening waited for the cool-down
        await wait_until(lambda: any(json.loads(r.body)["type"] == "endpoint.circuit_closed" for r in ops.requests), what="closed")
        view = (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant.auth)).json()
        assert view["breaker"]["state"] == "closed"


async def test_slow_endpoint_does_not_delay_another_tenant(stack: Stack) -> None:
    slow_tenant, fast_tenant = await new_tenant(stack.client, "Slow"), await new_tenant(stack.client, "Fast")
    slow_source, fast_source = await new_source(stack.client, slow_tenant), await new_source(stack.client, fast_tenant)
    async with Server(Script([(200, {}, 3.0)])) as slow, Server(Script()) as fast:
        await stack.endpoint(slow_tenant, slow.url)
        await stack.endpoint(fast_tenant, fast.url)
        for _ in range(10):
            await stack.ingest(slow_source)
        await wait_until(lambda: len(slow.requests) >= 5, what="the slow endpoint busy")
        await stack.ingest(fast_source)
        await wait_until(lambda: fast.requests, what="the healthy endpoint")
        # delivered while every request to the slow endpoint was still hanging (none finished)
        assert fast.requests[0].at - slow.requests[0].at < 1.0
        assert await stack.deliveries(slow_tenant, status="succeeded") == []


async def test_secret_rotation_signs_with_both_during_grace(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script()) as receiver:
        endpoint = await stack.endpoint(tenant, receiver.url)
        rotated = await stack.client.post(f"/api/v1/endpoints/{endpoint['id']}/rotate-secret", json={"grace_seconds": 3600}, headers=tenant.auth)
        new_secret = rotated.json()["secret"]
        await stack.ingest(source)
        await wait_until(lambda: receiver.requests, what="delivery")
        request = receiver.requests[0]
        assert len(request.headers["webhook-signature"].split()) == 2
        for secret in (endpoint["secret"], new_secret):
            assert _verify(secret, request)


async def test_test_event_reaches_only_that_endpoint(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    async with Server(Script()) as target, Server(Script()) as bystander:
        endpoint = await stack.endpoint(tenant, target.url)
        await stack.endpoint(tenant, bystander.url, event_types=["hookgate.*"])
        sent = await stack.client.post(f"/api/v1/endpoints/{endpoint['id']}/test", headers=tenant.auth)
        assert sent.status_code == 202
        await wait_until(lambda: target.requests, what="test event")
        assert json.loads(target.requests[0].body)["type"] == "hookgate.test"
        await asyncio.sleep(0.3)
        assert bystander.requests == []

        off = await stack.client.patch(f"/api/v1/endpoints/{endpoint['id']}", json={"enabled": False}, headers=tenant.auth)
        assert off.status_code == 200
        refused = await stack.client.post(f"/api/v1/endpoints/{endpoint['id']}/test", headers=tenant.auth)
        assert refused.status_code == 409 and refused.json()["type"].endswith("/endpoint-disabled")
        assert len(await stack.deliveries(tenant, endpoint_id=endpoint["id"])) == 1  # no dead letter made


async def test_deliveries_api_filters_and_isolation(stack: Stack) -> None:
    alice, bob = await new_tenant(stack.client, "Alice"), await new_tenant(stack.client, "Bob")
    source = await new_source(stack.client, alice)
    async with Server(Script()) as receiver:
        endpoint = await stack.endpoint(alice, receiver.url)
        event_id = await stack.ingest(source)
        [delivery] = await stack.settled(alice, 1)
        assert [d["id"] for d in await stack.deliveries(alice, endpoint_id=endpoint["id"])] == [delivery["id"]]
        assert [d["id"] for d in await stack.deliveries(alice, event_id=event_id)] == [delivery["id"]]
        assert await stack.deliveries(alice, status="dead") == []
        assert await stack.deliveries(bob) == []
        for path in (f"/api/v1/deliveries/{delivery['id']}", f"/api/v1/deliveries/{delivery['id']}/attempts"):
            assert (await stack.client.get(path, headers=bob.auth)).status_code == 404
        assert (await stack.client.post(f"/api/v1/endpoints/{endpoint['id']}/test", headers=bob.auth)).status_code == 404


@pytest.mark.parametrize("backend", ["postgres"])
async def test_redis_down_still_stores_and_delivers(stack_factory: Callable[..., Any]) -> None:
    """Nothing listens at the Redis URL: no doorbell, no breaker, no limiter — and still delivered."""
    stack = await stack_factory(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script()) as receiver:
        await stack.endpoint(tenant, receiver.url, rate_limit_per_second=50)
        event = stripe_event("charge_succeeded")
        await stack.ingest(source, event)
        [delivery] = await stack.settled(tenant, 1, timeout=30)
        assert delivery["attempts"] == 1
        assert [json.loads(r.body)["id"] for r in receiver.requests] == [event["id"]]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_worker_stops_while_redis_hangs(database_url: str, redis_url: str) -> None:
    """Redis behind a partition answers nothing: the stop still ends the loops and lets go of Redis
    within a bounded time (arq's close once waited on it for ever, and the loops behind it kept
    claiming until Kubernetes killed the pod)."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with PartitionProxy(port) as proxy:
        settings = make_settings(database_url, redis_url.replace(f":{port}/", f":{proxy.port}/"))
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, stop))
        await asyncio.sleep(1.0)  # started: arq and the doorbell listener hold Redis connections
        assert not worker.done()
        proxy.partition()
        stop.set()
        await asyncio.wait_for(worker, 30)  # the chart's grace is 45 s; it hung past any
