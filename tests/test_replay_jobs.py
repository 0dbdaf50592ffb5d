"""Bulk replay jobs and dead-letter redrives, end to end on both backends: real receivers, the
worker (or the embedded dispatcher) doing the batches, progress read back through the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from standardwebhooks.webhooks import Webhook

from delivery.replays import runner
from delivery.replays.models import ReplayJob
from gateway.database import create_engine, session_factory, utcnow
from tenants.models import Tenant
from tests.conftest import Stack, TenantHandle, new_source, new_tenant
from tests.support.backlog import add_events
from tests.support.receiver import Script, Server, wait_until
from tests.support.stripe_events import stripe_event

TYPES = ("charge.succeeded", "invoice.paid", "customer.updated", "invoice.created")


def _payload_ids(server: Server) -> list[str]:
    return [json.loads(request.body)["id"] for request in server.requests]


async def _job(stack: Stack, tenant: TenantHandle, job_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"/api/v1/replays/{job_id}", headers=tenant.auth)
    assert response.status_code == 200, response.text
    return response.json()


async def _finished(stack: Stack, tenant: TenantHandle, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while (job := await _job(stack, tenant, job_id))["status"] in ("queued", "running"):
        assert asyncio.get_running_loop().time() < deadline, f"job still {job['status']}: {job}"
        await asyncio.sleep(0.1)
    return job


@contextlib.asynccontextmanager
async def _slow_replay(
    stack_factory: Any, *, events: int, delay: float, concurrency: int, started: int
) -> AsyncIterator[tuple[Stack, TenantHandle, Server, dict[str, Any]]]:
    """A replay job over ``events`` stored events, under way to a receiver answering in ``delay``
    seconds, paced by 20 in flight."""
    stack: Stack = await stack_factory(replay_batch_size=20, replay_max_in_flight=20, delivery_concurrency=concurrency)
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    start = utcnow() - timedelta(hours=1)
    await add_events(
        stack.settings.database_url, uuid.UUID(tenant.id), uuid.UUID(source["id"]),
        [("charge.succeeded", start + timedelta(seconds=i)) for i in range(events)],
    )
    async with Server(Script([(200, {}, delay)])) as slow:
        await stack.endpoint(tenant, slow.url)
        created = (await stack.client.post("/api/v1/replays", json={"since": start.isoformat()}, headers=tenant.auth)).json()
        await wait_until(lambda: len(slow.requests) >= started, timeout=30, what="the replay to start")
        yield stack, tenant, slow, created


async def test_bulk_replay_delivers_exactly_the_window_and_types(stack_factory) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = await stack_factory(replay_batch_size=100, replay_max_in_flight=150, delivery_timeout=10.0, lease_seconds=30.0)
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    start = utcnow() - timedelta(hours=3)
    stored = await add_events(
        stack.settings.database_url,
        uuid.UUID(tenant.id),
        uuid.UUID(source["id"]),
        [(TYPES[i % len(TYPES)], start + timedelta(seconds=5 * i)) for i in range(2000)],
    )
    since, until = start + timedelta(minutes=40), start + timedelta(minutes=130)
    wanted = {external for external, kind, at in stored if since <= at < until and (kind == "charge.succeeded" or kind.startswith("invoice."))}
    charges = {external for external, kind, at in stored if since <= at < until and kind == "charge.succeeded"}
    async with Server(Script()) as everything, Server(Script()) as charge_only:
        await stack.endpoint(tenant, everything.url)
        only_charges = await stack.endpoint(tenant, charge_only.url, event_types=["charge.*"])
        response = await stack.client.post(
            "/api/v1/replays",
            json={"since": since.isoformat(), "until": until.isoformat(), "types": ["charge.succeeded", "invoice.*"]},
            headers=tenant.auth,
        )
        assert response.status_code == 202, response.text
        created = response.json()
        assert created["status"] == "queued" and created["total"] == len(wanted) and created["done"] == 0
        other_case = await stack.client.post(
            "/api/v1/replays", json={"since": since.isoformat(), "until": until.isoformat(), "types": ["INVOICE.*"]}, headers=tenant.auth
        )
        assert other_case.json()["total"] == 0  # types are matched as written, on SQLite too (its LIKE folds case)

        job = await _finished(stack, tenant, created["id"])
        assert job["status"] == "completed" and job["done"] == job["total"] == len(wanted) and job["skipped"] == 0
        await wait_until(lambda: len(everything.requests) + len(charge_only.requests) >= len(wanted) + len(charges), timeout=60, what="the replay")
        await asyncio.sleep(0.3)  # anything beyond the expected would show up now
        assert Counter(_payload_ids(everything)) == Counter(wanted)  # each once, nothing outside the filter
        assert Counter(_payload_ids(charge_only)) == Counter(charges)  # subscriptions still apply
        request = charge_only.requests[0]
        assert Webhook(only_charges["secret"]).verify(request.body, request.headers)["type"] == "charge.succeeded"

        # the receivers can have a request a moment before the worker commits its outcome
        rows = await stack.settled(tenant, len(wanted) + len(charges))
        assert len(rows) == len(wanted) + len(charges) and all(row["is_replay"] and row["replay_job_id"] == created["id"] for row in rows)


async def test_a_replay_to_many_endpoints_keeps_its_deliveries_in_flight_under_the_cap(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """The cap counts deliveries, and an event makes one per endpoint: a batch takes as many events as
    the room left allows, divided among the endpoints (it took that many events, five times the cap)."""
    stack: Stack = await stack_factory(replay_batch_size=20, replay_max_in_flight=20, retry_schedule="0,3600")
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    start = utcnow() - timedelta(hours=1)
    await add_events(stack.settings.database_url, uuid.UUID(tenant.id), uuid.UUID(source["id"]),
                     [("charge.succeeded", start + timedelta(seconds=i)) for i in range(100)])
    async with Server(Script([(503, {}, 0.0)])) as down:
        for path in range(5):
            await stack.endpoint(tenant, f"{down.url}/{path}")
        created = (await stack.client.post("/api/v1/replays", json={"since": start.isoformat()}, headers=tenant.auth)).json()
        await wait_until(lambda: len(down.requests) >= 20, timeout=30, what="the first deliveries")
        await asyncio.sleep(1.0)  # passes enough for more batches, had the job room for them
        waiting = await stack.deliveries(tenant, replay_job_id=created["id"])
        assert 0 < len([d for d in waiting if d["status"] in ("pending", "failed")]) <= 20
        assert (await _job(stack, tenant, created["id"]))["done"] == 4  # 4 events × 5 endpoints fill the 20


async def test_a_replay_can_be_cancelled_and_withdraws_what_it_has_not_sent(stack_factory) -> None:  # type: ignore[no-untyped-def]
    async with _slow_replay(stack_factory, events=400, delay=0.05, concurrency=4, started=30) as (stack, tenant, slow, created):

        cancelled = await stack.client.post(f"/api/v1/replays/{created['id']}/cancel", headers=tenant.auth)
        assert cancelled.status_code == 200, cancelled.text
        job = cancelled.json()
        assert job["status"] == "cancelled" and job["finished_at"] and job["done"] < job["total"] == 400

        pending = await stack.deliveries(tenant, replay_job_id=created["id"], status="pending")
        assert all(row["attempts"] == 0 for row in pending) and len(pending) <= 4  # only leased ones may still go
        await asyncio.sleep(1.0)
        sent = len(slow.requests)
        await asyncio.sleep(1.0)
        assert len(slow.requests) == sent < job["done"]  # nothing more goes out, and untried ones were withdrawn
        again = await stack.client.post(f"/api/v1/replays/{created['id']}/cancel", headers=tenant.auth)
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        assert (await _job(stack, tenant, created["id"]))["done"] == job["done"]


async def test_redrive_retries_exactly_the_dead_letters_once_the_receiver_recovers(stack_factory) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = await stack_factory(retry_schedule="0,0.2", delivery_timeout=10.0, lease_seconds=30.0)
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    down = Script([(500, {}, 0.0)])
    async with Server(down) as flaky, Server(Script([(503, {}, 0.0)])) as other:
        flaky_ep = await stack.endpoint(tenant, flaky.url)
        await stack.endpoint(tenant, other.url)
        event_ids = [await stack.ingest(source, stripe_event("payment_intent_payment_failed")) for _ in range(5)]
        dead = await stack.settled(tenant, 10, status="dead")
        assert all(row["attempts"] == 2 for row in dead)

        down.answers = [(200, {}, 0.0)]  # the receiver is fixed
        response = await stack.client.post(
            "/api/v1/deliveries/redrive", json={"endpoint_id": flaky_ep["id"]}, headers=tenant.auth
        )
        assert response.status_code == 202, response.text
        assert response.json()["total"] == 5
        job = await _finished(stack, tenant, response.json()["id"])
        assert job["status"] == "completed" and job["done"] == 5 and job["skipped"] == 0

        redriven = await stack.settled(tenant, 5, status="succeeded")
        assert sorted(row["event_id"] for row in redriven) == sorted(event_ids)
        assert {row["id"] for row in redriven} <= {row["id"] for row in dead}  # in place: the same deliveries
        assert all(row["attempts"] == 3 and row["replay_job_id"] == job["id"] for row in redriven)
        attempts = (await stack.client.get(f"/api/v1/deliveries/{redriven[0]['id']}/attempts", headers=tenant.auth)).json()["data"]
        assert [a["status_code"] for a in attempts] == [500, 500, 200]
        ids = Counter(request.headers["webhook-id"] for request in flaky.requests)
        assert len(ids) == 5 and set(ids.values()) == {3}  # same webhook-id: the receiver never acknowledged it

        still_dead = await stack.deliveries(tenant, status="dead")
        assert len(still_dead) == 5 and all(row["endpoint_id"] != flaky_ep["id"] for row in still_dead)
        nothing = await stack.client.post("/api/v1/deliveries/redrive", json={"endpoint_id": flaky_ep["id"]}, headers=tenant.auth)
        assert nothing.json()["status"] == "completed" and nothing.json()["total"] == 0

        # exactly the chosen dead letters (the dashboard's "redrive selected"); a succeeded one is not dead: not counted
        chosen = [still_dead[0]["id"], redriven[0]["id"]]
        picked = await stack.client.post("/api/v1/deliveries/redrive", json={"delivery_ids": chosen}, headers=tenant.auth)
        assert picked.status_code == 202 and picked.json()["total"] == 1 and picked.json()["delivery_ids"] == sorted(chosen)
        empty = await stack.client.post("/api/v1/deliveries/redrive", json={"delivery_ids": []}, headers=tenant.auth)
        assert empty.status_code == 400
        unknown = await stack.client.post("/api/v1/deliveries/redrive", json={"delivery_ids": [str(uuid.uuid4())]},
                                          headers=tenant.auth)
        assert unknown.status_code == 404


async def test_a_redrive_skips_a_dead_letter_whose_event_a_replay_has_delivered(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """Replayed and delivered under a new webhook-id, the event is no longer its dead letter's to
    send: reviving that one too would have the receiver process the event twice."""
    stack: Stack = await stack_factory(retry_schedule="0,0.2")
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    down = Script([(500, {}, 0.0)])
    async with Server(down) as receiver:
        endpoint = await stack.endpoint(tenant, receiver.url)
        replayed, other = stripe_event("charge_dispute_created"), stripe_event("invoice_paid")
        replayed_id = await stack.ingest(source, replayed)
        await stack.ingest(source, other)
        await stack.settled(tenant, 2, status="dead")
        down.answers = [(200, {}, 0.0)]
        tried = len(receiver.requests)
        assert (await stack.client.post(f"/api/v1/events/{replayed_id}/replay", headers=tenant.auth)).status_code == 202
        await stack.settled(tenant, 1)

        response = await stack.client.post("/api/v1/deliveries/redrive", json={"endpoint_id": endpoint["id"]}, headers=tenant.auth)
        job = await _finished(stack, tenant, response.json()["id"])
        assert (job["total"], job["done"], job["skipped"]) == (2, 2, 1)
        await stack.settled(tenant, 2)
        assert sorted(_payload_ids(receiver)[tried:]) == sorted([replayed["id"], other["id"]])  # each once since the fix


@contextlib.asynccontextmanager
async def _one_event(stack_factory: Any, status: int) -> AsyncIterator[tuple[Stack, TenantHandle, Script, Server, dict[str, Any], dict[str, Any], str]]:
    """One invoice.paid ingested for an endpoint whose receiver answers ``status`` (change it through
    the script); deliveries die after two tries."""
    stack: Stack = await stack_factory(retry_schedule="0,0.2")
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    script = Script([(status, {}, 0.0)])
    async with Server(script) as receiver:
        endpoint = await stack.endpoint(tenant, receiver.url)
        event = stripe_event("invoice_paid")
        yield stack, tenant, script, receiver, endpoint, event, await stack.ingest(source, event)


async def _replay_dies_then_redrive(
    stack: Stack, tenant: TenantHandle, script: Script, receiver: Server, endpoint: dict[str, Any], event_id: str, *, dead: int
) -> tuple[dict[str, Any], int]:
    """Replay the event to a failing receiver until ``dead`` deliveries are dead, fix the receiver and
    redrive the endpoint: the finished job, and how many requests the receiver had before."""
    assert (await stack.client.post(f"/api/v1/events/{event_id}/replay", headers=tenant.auth)).status_code == 202
    await stack.settled(tenant, dead, status="dead")
    script.answers = [(200, {}, 0.0)]
    tried = len(receiver.requests)
    response = await stack.client.post("/api/v1/deliveries/redrive", json={"endpoint_id": endpoint["id"]}, headers=tenant.auth)
    return await _finished(stack, tenant, response.json()["id"]), tried


async def test_a_dead_replay_is_redriven_though_the_original_was_delivered_before_it(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """Delivered, lost by the receiver, replayed, and the replay died: nothing was delivered since
    that dead letter was made, so a redrive sends it, as Svix's recovery would."""
    async with _one_event(stack_factory, 200) as (stack, tenant, script, receiver, endpoint, event, event_id):
        await stack.settled(tenant, 1)
        script.answers = [(500, {}, 0.0)]
        job, tried = await _replay_dies_then_redrive(stack, tenant, script, receiver, endpoint, event_id, dead=1)
        assert (job["total"], job["skipped"]) == (1, 0)
        await stack.settled(tenant, 2)
        assert _payload_ids(receiver)[tried:] == [event["id"]]


async def test_an_original_and_its_replay_both_dead_are_redriven_once(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """Both dead letters of one event and endpoint: the redrive revives the newer only, so the
    receiver gets the event once, not twice under two webhook-ids."""
    async with _one_event(stack_factory, 500) as (stack, tenant, script, receiver, endpoint, event, event_id):
        await stack.settled(tenant, 1, status="dead")
        job, tried = await _replay_dies_then_redrive(stack, tenant, script, receiver, endpoint, event_id, dead=2)
        assert (job["total"], job["done"], job["skipped"]) == (2, 2, 1)
        [revived] = await stack.settled(tenant, 1)
        assert revived["is_replay"] is True and len(await stack.deliveries(tenant, status="dead")) == 1
        await asyncio.sleep(0.5)  # time for a second copy, were one on its way
        assert _payload_ids(receiver)[tried:] == [event["id"]]


async def test_a_replay_that_joined_a_job_s_delivery_outlives_the_job_s_cancel(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """A single replay answered with a bulk job's waiting delivery owns it from then on: cancelling
    the job withdraws its other untried deliveries, not the one that replay promised."""
    async with _slow_replay(stack_factory, events=100, delay=0.5, concurrency=2, started=2) as (stack, tenant, slow, created):
        waiting = await stack.deliveries(tenant, replay_job_id=created["id"], status="pending")
        last = max(waiting, key=lambda row: row["created_at"])  # the last in the queue: not leased yet
        replayed = await stack.client.post(f"/api/v1/events/{last['event_id']}/replay", headers=tenant.auth)
        [joined] = replayed.json()["deliveries"]
        assert joined["id"] == last["id"]

        cancelled = await stack.client.post(f"/api/v1/replays/{created['id']}/cancel", headers=tenant.auth)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        kept = await stack.client.get(f"/api/v1/deliveries/{joined['id']}", headers=tenant.auth)
        assert kept.status_code == 200 and kept.json()["replay_job_id"] is None
        for _ in range(300):  # it is still on its way: delivered, as the replay's 202 said
            status = (await stack.client.get(f"/api/v1/deliveries/{joined['id']}", headers=tenant.auth)).json()["status"]
            if status == "succeeded":
                break
            await asyncio.sleep(0.1)
        assert status == "succeeded"


async def test_a_bulk_replay_over_another_s_window_leaves_its_deliveries_in_that_job(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """A second bulk job joins the first's waiting deliveries without taking them from it, so
    cancelling both withdraws them all: nothing is left queued in no job."""
    async with _slow_replay(stack_factory, events=100, delay=0.5, concurrency=2, started=2) as (stack, tenant, _slow, first):
        second = (await stack.client.post("/api/v1/replays", json={"since": first["since"]}, headers=tenant.auth)).json()
        for _ in range(100):  # the second job's first batch has run
            if (await _job(stack, tenant, second["id"]))["done"]:
                break
            await asyncio.sleep(0.1)
        for job_id in (second["id"], first["id"]):
            assert (await stack.client.post(f"/api/v1/replays/{job_id}/cancel", headers=tenant.auth)).status_code == 200
        orphans = [d for d in await stack.deliveries(tenant, status="pending") if d["replay_job_id"] is None and d["attempts"] == 0]
        assert orphans == []


async def test_only_failed_replays_just_the_events_whose_delivery_died(stack_factory) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = await stack_factory(retry_schedule="0")
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    script = Script([(200, {}, 0.0)])
    async with Server(script) as receiver:
        endpoint = await stack.endpoint(tenant, receiver.url)
        since = utcnow() - timedelta(seconds=1)
        delivered = await stack.ingest(source)
        await stack.settled(tenant, 1)
        script.answers, script.served = [(500, {}, 0.0)], 0
        died = await stack.ingest(source)
        await stack.settled(tenant, 1, status="dead")
        script.answers = [(200, {}, 0.0)]
        response = await stack.client.post(
            "/api/v1/replays", json={"since": since.isoformat(), "endpoint_id": endpoint["id"], "only_failed": True}, headers=tenant.auth
        )
        job = await _finished(stack, tenant, response.json()["id"])
        assert job["done"] == 2 and job["skipped"] == 1
        [replayed] = await stack.deliveries(tenant, replay_job_id=job["id"])
        assert replayed["event_id"] == died != delivered and replayed["is_replay"]
        await stack.settled(tenant, 2)


async def test_replay_jobs_refuse_bad_requests_and_other_tenants(stack: Stack) -> None:
    alice, bob = await new_tenant(stack.client, "Alice"), await new_tenant(stack.client, "Bob")
    source = await new_source(stack.client, alice)
    since = (utcnow() - timedelta(hours=1)).isoformat()
    no_endpoint = await stack.client.post("/api/v1/replays", json={"since": since}, headers=alice.auth)
    assert no_endpoint.status_code == 409 and no_endpoint.json()["type"].endswith("/no-endpoints")
    async with Server(Script()) as receiver:
        endpoint = await stack.endpoint(alice, receiver.url)
        bobs_endpoint = await stack.endpoint(bob, receiver.url)
        backwards = await stack.client.post("/api/v1/replays", json={"since": since, "until": since}, headers=alice.auth)
        assert backwards.status_code == 400 and backwards.json()["type"].endswith("/invalid-window")
        assert (await stack.client.post("/api/v1/replays", json={"until": since}, headers=alice.auth)).status_code == 400
        assert (await stack.client.post("/api/v1/replays", json={"since": "yesterday"}, headers=alice.auth)).status_code == 400
        for types in (["a*b"], ["x\u0000"]):
            refused = await stack.client.post("/api/v1/replays", json={"since": since, "types": types}, headers=alice.auth)
            assert refused.status_code == 422 and refused.json()["type"].endswith("/invalid-types"), refused.text

        job = (await stack.client.post("/api/v1/replays", json={"since": since}, headers=alice.auth)).json()
        assert job["status"] == "completed" and job["total"] == 0  # nothing in the window: done at once
        for call in (
            stack.client.get(f"/api/v1/replays/{job['id']}", headers=bob.auth),
            stack.client.post(f"/api/v1/replays/{job['id']}/cancel", headers=bob.auth),
            stack.client.post("/api/v1/replays", json={"since": since, "endpoint_id": endpoint["id"]}, headers=bob.auth),
            stack.client.post("/api/v1/replays", json={"since": since, "source_id": source["id"]}, headers=bob.auth),
            stack.client.post("/api/v1/replays", json={"since": since, "endpoint_id": bobs_endpoint["id"]}, headers=alice.auth),
            stack.client.post("/api/v1/deliveries/redrive", json={"endpoint_id": endpoint["id"]}, headers=bob.auth),
            stack.client.post(f"/api/v1/sources/{source['id']}/backfill", json={"since": since}, headers=bob.auth),
        ):
            response = await call
            assert response.status_code == 404, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
        assert (await stack.client.get("/api/v1/replays", headers=bob.auth)).json()["data"] == []
        [listed] = (await stack.client.get("/api/v1/replays", headers=alice.auth)).json()["data"]
        assert listed["id"] == job["id"]
        finished = await stack.client.post(f"/api/v1/replays/{job['id']}/cancel", headers=alice.auth)
        assert finished.status_code == 409 and finished.json()["type"].endswith("/job-finished")
        for far in ({"since": "0001-01-01T00:00:00+14:00"}, {"since": since, "until": "9999-12-31T23:59:59-14:00"}):
            for path in ("/api/v1/replays", "/api/v1/deliveries/redrive"):
                bounded = await stack.client.post(path, json=far, headers=alice.auth)
                assert bounded.status_code == 202, (path, far, bounded.text)  # the ends of time, not a 500


async def test_an_idempotency_key_makes_one_replay_job(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    async with Server(Script()) as receiver:
        await stack.endpoint(tenant, receiver.url)
        body = {"since": (utcnow() - timedelta(hours=1)).isoformat()}
        headers = {**tenant.auth, "idempotency-key": "replay-after-incident-42"}
        first = await stack.client.post("/api/v1/replays", json=body, headers=headers)
        second = await stack.client.post("/api/v1/replays", json=body, headers=headers)
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        assert len((await stack.client.get("/api/v1/replays", headers=tenant.auth)).json()["data"]) == 1


async def test_each_pass_moves_one_job_per_tenant(database_url: str) -> None:
    """A pass takes each tenant's least recently moved active job: a tenant's thousand jobs once
    filled every pass (100 jobs), and another tenant's one waited behind them."""
    engine = create_engine(database_url, pool_size=1)
    now = utcnow()
    try:
        async with session_factory(engine)() as session, session.begin():
            busy, quiet = Tenant(name="busy"), Tenant(name="quiet")
            session.add_all([busy, quiet])
            await session.flush()
            jobs = [ReplayJob(tenant_id=busy.id, kind="replay", updated_at=now - timedelta(seconds=n)) for n in range(5)]
            jobs.append(ReplayJob(tenant_id=quiet.id, kind="replay", updated_at=now))
            jobs.append(ReplayJob(tenant_id=quiet.id, kind="replay", status="completed", updated_at=now - timedelta(hours=1)))
            session.add_all(jobs)
        async with session_factory(engine)() as session:
            chosen = list(await session.scalars(runner._NEXT_PER_TENANT))
    finally:
        await engine.dispose()
    assert chosen == [jobs[4].id, jobs[5].id]  # the busy tenant's oldest, then the quiet one's (the finished job is no one's turn)


async def test_a_replay_joins_a_delivery_still_waiting_instead_of_doubling_it(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """The receiver has not acknowledged a delivery that is waiting to retry: a second one under another
    webhook-id would have it process the event twice. The replay makes that one due now instead, with
    a fresh retry schedule; a bulk job does the same and counts the pair as skipped."""
    stack: Stack = await stack_factory(retry_schedule="0,3600")  # after one failure, the retry waits an hour
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(500, {}, 0.0), (500, {}, 0.0), (200, {}, 0.0)])) as receiver:
        await stack.endpoint(tenant, receiver.url)
        first, second = stripe_event("invoice_paid"), stripe_event("charge_succeeded")
        event_id = await stack.ingest(source, first)
        await stack.ingest(source, second)
        retrying = await stack.settled(tenant, 2, status="failed")

        replayed = await stack.client.post(f"/api/v1/events/{event_id}/replay", headers=tenant.auth)
        assert replayed.status_code == 202, replayed.text
        [joined] = replayed.json()["deliveries"]
        assert joined["id"] in {d["id"] for d in retrying} and joined["is_replay"] is False
        await stack.settled(tenant, 1)  # made due now: its retry succeeded, under the webhook-id it had
        ids = [(json.loads(r.body)["id"], r.headers["webhook-id"]) for r in receiver.requests]
        assert ids[2] == next(pair for pair in ids[:2] if pair[0] == first["id"])

        since = (utcnow() - timedelta(minutes=5)).isoformat()
        job = await stack.client.post("/api/v1/replays", json={"since": since}, headers=tenant.auth)
        finished = await _finished(stack, tenant, job.json()["id"])
        assert finished["done"] == 2 and finished["skipped"] == 1  # the waiting one joined; the delivered one is replayed
        deliveries = await stack.settled(tenant, 3)
        assert sum(d["is_replay"] for d in deliveries) == 1


async def test_a_replay_of_a_delivery_being_sent_gets_its_own(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """A worker is sending the delivery right now, and this attempt may be its last: the replay does not
    wait on it, or a failure would swallow the replay."""
    stack: Stack = await stack_factory(retry_schedule="0", delivery_timeout=4.0)  # one attempt, then dead
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script([(500, {}, 1.5), (200, {}, 0.0)])) as receiver:
        await stack.endpoint(tenant, receiver.url)
        event_id = await stack.ingest(source)
        await wait_until(lambda: receiver.requests, what="the attempt in flight")
        replayed = await stack.client.post(f"/api/v1/events/{event_id}/replay", headers=tenant.auth)
        [replay] = replayed.json()["deliveries"]
        assert replay["is_replay"] is True
        [dead] = await stack.settled(tenant, 1, status="dead")
        [delivered] = await stack.settled(tenant, 1)
        assert (dead["is_replay"], delivered["id"]) == (False, replay["id"])
