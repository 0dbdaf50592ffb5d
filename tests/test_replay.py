"""Single-event replay and dead-letter purge, end to end on both backends: the replay is the
original bytes under a fresh signature and its own webhook-id, verified by the official library."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from standardwebhooks.webhooks import Webhook

from tests.conftest import Stack, new_source, new_tenant
from tests.support.receiver import Script, Server, wait_until
from tests.support.stripe_events import stripe_event


async def test_replay_one_event_to_one_of_two_endpoints(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script()) as first, Server(Script()) as second:
        ep_first = await stack.endpoint(tenant, first.url)
        await stack.endpoint(tenant, second.url)
        event = stripe_event("invoice_paid")
        event_id = await stack.ingest(source, event)
        await stack.settled(tenant, 2)

        response = await stack.client.post(
            f"/api/v1/events/{event_id}/replay", json={"endpoint_ids": [ep_first["id"]]}, headers=tenant.auth
        )
        assert response.status_code == 202, response.text
        [replayed] = response.json()["deliveries"]
        assert replayed["is_replay"] is True and replayed["endpoint_id"] == ep_first["id"]
        assert replayed["event_id"] == event_id and replayed["status"] == "pending"

        await wait_until(lambda: len(first.requests) == 2, what="the replay")
        original, replay = first.requests
        assert replay.body == original.body == json.dumps(event).encode()  # the stored bytes
        assert replay.headers["webhook-id"] != original.headers["webhook-id"]  # not dropped as a duplicate
        assert Webhook(ep_first["secret"]).verify(replay.body, replay.headers)["id"] == event["id"]
        await stack.settled(tenant, 3)
        assert len(second.requests) == 1  # the other endpoint was not replayed to

        everywhere = await stack.client.post(f"/api/v1/events/{event_id}/replay", headers=tenant.auth)
        assert everywhere.status_code == 202 and len(everywhere.json()["deliveries"]) == 2
        await wait_until(lambda: len(first.requests) == 3 and len(second.requests) == 2, what="the replay to all")
        detail = (await stack.client.get(f"/api/v1/events/{event_id}", headers=tenant.auth)).json()
        assert sorted(d["is_replay"] for d in detail["deliveries"]) == [False, False, True, True, True]


async def test_replay_refuses_what_it_cannot_do_and_other_tenants(stack: Stack) -> None:
    alice, bob = await new_tenant(stack.client, "Alice"), await new_tenant(stack.client, "Bob")
    source = await new_source(stack.client, alice)
    async with Server(Script()) as receiver:
        invoices_only = await stack.endpoint(alice, receiver.url, event_types=["invoice.*"])
        bobs = await stack.endpoint(bob, receiver.url)
        event_id = await stack.ingest(source, stripe_event("charge_succeeded"))
        path = f"/api/v1/events/{event_id}/replay"

        nobody = await stack.client.post(path, headers=alice.auth)
        assert nobody.status_code == 409 and nobody.json()["type"].endswith("/no-endpoints")
        named = await stack.client.post(path, json={"endpoint_ids": [invoices_only["id"]]}, headers=alice.auth)
        assert named.status_code == 202  # naming an endpoint replays regardless of its filter

        assert (await stack.client.post(path, json={"endpoint_ids": [bobs["id"]]}, headers=alice.auth)).status_code == 404
        assert (await stack.client.post(path, json={"endpoint_ids": [str(uuid.uuid4())]}, headers=alice.auth)).status_code == 404
        assert (await stack.client.post(path, headers=bob.auth)).status_code == 404  # Alice's event
        assert (await stack.client.post(path, json={"endpoint_ids": []}, headers=alice.auth)).status_code == 400
        assert (await stack.client.post(path, json={"endpoints": []}, headers=alice.auth)).status_code == 400

        await stack.client.patch(f"/api/v1/endpoints/{invoices_only['id']}", json={"enabled": False}, headers=alice.auth)
        disabled = await stack.client.post(path, json={"endpoint_ids": [invoices_only["id"]]}, headers=alice.auth)
        assert disabled.status_code == 409 and disabled.json()["endpoint_ids"] == [invoices_only["id"]]


async def test_dead_letters_are_filtered_by_time_and_purged_while_the_event_stays(stack_factory) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = await stack_factory(retry_schedule="0")
    tenant, other = await new_tenant(stack.client), await new_tenant(stack.client, "Other")
    source = await new_source(stack.client, tenant)
    async with Server(Script([(500, {}, 0.0)])) as broken, Server(Script()) as healthy:
        await stack.endpoint(tenant, broken.url, event_types=["charge.*"])
        await stack.endpoint(tenant, healthy.url, event_types=["invoice.*"])
        event_id = await stack.ingest(source, stripe_event("charge_failed"))
        await stack.ingest(source, stripe_event("invoice_paid"))
        [dead] = await stack.settled(tenant, 1, status="dead")
        [alive] = await stack.settled(tenant, 1)
        assert dead["last_status_code"] == 500 and dead["last_error"]

        created = datetime.fromisoformat(dead["created_at"])
        window = {"since": (created - timedelta(seconds=1)).isoformat(), "until": (created + timedelta(seconds=1)).isoformat()}
        listed = await stack.client.get("/api/v1/deliveries", params={"status": "dead", **window}, headers=tenant.auth)
        assert [d["id"] for d in listed.json()["data"]] == [dead["id"]]
        later = {"since": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        assert (await stack.client.get("/api/v1/deliveries", params={"status": "dead", **later}, headers=tenant.auth)).json()["data"] == []

        assert (await stack.client.delete(f"/api/v1/deliveries/{dead['id']}", headers=other.auth)).status_code == 404
        not_dead = await stack.client.delete(f"/api/v1/deliveries/{alive['id']}", headers=tenant.auth)
        assert not_dead.status_code == 409 and not_dead.json()["type"].endswith("/not-dead")
        assert (await stack.client.delete(f"/api/v1/deliveries/{dead['id']}", headers=tenant.auth)).status_code == 204
        assert (await stack.client.get(f"/api/v1/deliveries/{dead['id']}", headers=tenant.auth)).status_code == 404
        assert (await stack.client.get(f"/api/v1/deliveries/{dead['id']}/attempts", headers=tenant.auth)).status_code == 404
        assert await stack.deliveries(tenant, status="dead") == []
        event = (await stack.client.get(f"/api/v1/events/{event_id}", headers=tenant.auth)).json()
        assert event["id"] == event_id and event["deliveries"] == []  # the event stays, ready for a replay
