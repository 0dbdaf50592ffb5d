"""Stripe backfill on both backends: the real ``stripe`` library lists events from a local server
that answers in Stripe's format; events the gateway already has are skipped, the rest stored and
delivered once; the restricted key is stored encrypted and never returned."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from gateway.database import create_engine
from tests.conftest import Stack, new_source, new_tenant
from tests.support.fake_stripe import FakeStripe
from tests.support.receiver import Script, Server, wait_until
from tests.support.stripe_events import fixture_names, stripe_event

API_KEY = "rk_test_" + secrets.token_hex(12)


def _account_events(count: int) -> list[dict[str, Any]]:
    """A Stripe account's recent events: real payloads, one a minute, newest last."""
    names = fixture_names()
    now = int(time.time())
    return [stripe_event(names[i % len(names)], created=now - 60 * (count - i)) for i in range(count)]


async def _stored_key(database_url: str, source_id: str) -> bytes | None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT id, stripe_api_key FROM sources"))).all()
            return next(bytes(key) for row_id, key in rows if str(row_id).replace("-", "") == source_id.replace("-", ""))
    finally:
        await engine.dispose()


async def _finished(stack: Stack, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    for _ in range(300):
        job = (await stack.client.get(f"/api/v1/replays/{job_id}", headers=auth)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"backfill still {job['status']}: {job}")


async def test_backfill_stores_and_delivers_only_what_was_missed(stack_factory) -> None:  # type: ignore[no-untyped-def]
    account = _account_events(250)
    fake = FakeStripe(API_KEY, account)
    async with Server(fake) as stripe_api, Server(Script()) as receiver:
        # A generous timeout: "none delivered twice" must not hinge on a loaded loop's timing
        # (a timed-out attempt that did arrive is retried: at-least-once, by design).
        stack: Stack = await stack_factory(stripe_api_base=stripe_api.url, replay_batch_size=120, delivery_timeout=10.0, lease_seconds=30.0)
        tenant = await new_tenant(stack.client)
        source = await new_source(stack.client, tenant)
        await stack.endpoint(tenant, receiver.url)
        for event in account[::5] + account[1::5][:50]:  # 100 of them reached the gateway live
            await stack.ingest(source, event)
        await stack.settled(tenant, 100)

        patched = await stack.client.patch(f"/api/v1/sources/{source['id']}", json={"stripe_api_key": API_KEY}, headers=tenant.auth)
        assert patched.status_code == 200, patched.text
        assert patched.json()["has_stripe_api_key"] is True and API_KEY not in patched.text
        shown = await stack.client.get(f"/api/v1/sources/{source['id']}", headers=tenant.auth)
        assert shown.json()["has_stripe_api_key"] is True and API_KEY not in shown.text
        assert API_KEY.encode() not in (await _stored_key(stack.settings.database_url, source["id"]) or b"")

        since = account[0]["created"] - 1
        response = await stack.client.post(
            f"/api/v1/sources/{source['id']}/backfill", json={"since": datetime.fromtimestamp(since, UTC).isoformat()}, headers=tenant.auth
        )
        assert response.status_code == 202, response.text
        assert response.json()["kind"] == "backfill" and response.json()["total"] is None
        job = await _finished(stack, tenant.auth, response.json()["id"])
        assert job["status"] == "completed", job
        assert (job["total"], job["done"], job["skipped"]) == (250, 250, 100)

        await stack.settled(tenant, 250, timeout=60)
        await asyncio.sleep(0.3)
        delivered = Counter(json.loads(request.body)["id"] for request in receiver.requests)
        assert delivered == Counter(event["id"] for event in account)  # every event once: none missed, none twice

        events = (await stack.client.get("/api/v1/events?limit=200", headers=tenant.auth)).json()["data"]
        newest = (await stack.client.get(f"/api/v1/events/{events[0]['id']}", headers=tenant.auth)).json()
        original = next(event for event in account if event["id"] == newest["external_id"])
        assert newest["payload"] == original and newest["type"] == original["type"]  # as Stripe's API has it

        pages = [request for request in fake.requests if request.target.startswith("/v1/events")]
        assert len(pages) >= 4 and all(request.headers["authorization"] == f"Bearer {API_KEY}" for request in pages)
        assert any("starting_after=" in request.target for request in pages)  # auto-pagination, resumed across batches


async def test_backfill_refuses_what_it_cannot_do_and_fails_on_a_rejected_key(stack_factory) -> None:  # type: ignore[no-untyped-def]
    fake = FakeStripe(API_KEY, _account_events(3))
    async with Server(fake) as stripe_api:
        stack: Stack = await stack_factory(stripe_api_base=stripe_api.url)
        tenant = await new_tenant(stack.client)
        stripe_source = await new_source(stack.client, tenant)
        github = await new_source(stack.client, tenant, provider="github")
        since = {"since": "2026-01-01T00:00:00Z"}

        no_key = await stack.client.post(f"/api/v1/sources/{stripe_source['id']}/backfill", json=since, headers=tenant.auth)
        assert no_key.status_code == 409 and no_key.json()["type"].endswith("/no-stripe-api-key")
        not_stripe = await stack.client.post(f"/api/v1/sources/{github['id']}/backfill", json=since, headers=tenant.auth)
        assert not_stripe.status_code == 409 and not_stripe.json()["type"].endswith("/not-stripe")
        on_github = await stack.client.patch(f"/api/v1/sources/{github['id']}", json={"stripe_api_key": API_KEY}, headers=tenant.auth)
        assert on_github.status_code == 422
        malformed = await stack.client.patch(f"/api/v1/sources/{stripe_source['id']}", json={"stripe_api_key": "pk_test_123"}, headers=tenant.auth)
        assert malformed.status_code == 400 and "pk_test_123" not in malformed.text

        wrong = "rk_test_" + secrets.token_hex(12)
        await stack.client.patch(f"/api/v1/sources/{stripe_source['id']}", json={"stripe_api_key": wrong}, headers=tenant.auth)
        job = (await stack.client.post(f"/api/v1/sources/{stripe_source['id']}/backfill", json=since, headers=tenant.auth)).json()
        failed = await _finished(stack, tenant.auth, job["id"])
        assert failed["status"] == "failed" and "Invalid API Key" in failed["error"] and wrong not in failed["error"]

        cleared = await stack.client.patch(f"/api/v1/sources/{stripe_source['id']}", json={"stripe_api_key": None}, headers=tenant.auth)
        assert cleared.json()["has_stripe_api_key"] is False
        await wait_until(lambda: len(fake.requests) == 1, what="one refused listing")
