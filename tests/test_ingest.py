"""The ingest route on Postgres and SQLite: every provider, every rejection, dedupe, storage outages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar import Litestar
from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook

from gateway.app import create_app
from gateway.database import create_engine, session_factory
from gateway.events.facts import stripe_facts
from gateway.events.priority import classify
from gateway.migrate import upgrade_async
from tenants.crypto import SecretBox
from tenants.sources import directory as directory_module
from tenants.sources.directory import SourceDirectory
from tests.conftest import SECRET_KEY, TenantHandle, ingest_path, make_settings, new_source, new_tenant
from tests.support.client import AppClient
from tests.support.services import ThrowawayPostgres
from tests.support.stripe_events import fixture_names, signed_stripe, stripe_event, stripe_signature

Client = AsyncTestClient[Litestar]


async def _events(client: Client, tenant: TenantHandle) -> list[dict[str, Any]]:
    return (await client.get("/api/v1/events?limit=200", headers=tenant.auth)).json()["data"]


def _hmac(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def _signed(provider: str, secret: str, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A request as each provider sends it, signed the provider's way."""
    body = json.dumps(event).encode()
    delivery_id = str(uuid.uuid4())
    if provider == "stripe":
        return body, {"stripe-signature": stripe_signature(body, secret)}
    if provider == "standard_webhooks":
        now = datetime.now(UTC)
        signature = Webhook(secret).sign(delivery_id, now, body.decode())
        return body, {"webhook-id": delivery_id, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    if provider == "github":
        return body, {
            "x-hub-signature-256": "sha256=" + _hmac(secret, body).hex(),
            "x-github-event": "pull_request",
            "x-github-delivery": delivery_id,
        }
    if provider == "shopify":
        return body, {
            "x-shopify-hmac-sha256": base64.b64encode(_hmac(secret, body)).decode(),
            "x-shopify-topic": "orders/create",
            "x-shopify-webhook-id": delivery_id,
        }
    return body, {"x-webhook-signature": "sha256=" + _hmac(secret, body).hex()}


def _payload(provider: str) -> dict[str, Any]:
    if provider == "stripe":
        return stripe_event("charge_succeeded")
    if provider == "github":
        return {"action": "opened", "number": 7}
    if provider == "shopify":
        return {"id": 820982911946154508, "email": "jon@example.com"}
    return {"id": f"ev_{uuid.uuid4().hex}", "type": "user.created", "data": {"n": 1}}


EXPECTED_TYPE = {
    "stripe": "charge.succeeded",
    "standard_webhooks": "user.created",
    "github": "pull_request.opened",
    "shopify": "orders/create",
    "hmac_sha256": "user.created",
}
PROVIDERS = list(EXPECTED_TYPE)
SIGNATURE_HEADER = {
    "stripe": "stripe-signature",
    "standard_webhooks": "webhook-signature",
    "github": "x-hub-signature-256",
    "shopify": "x-shopify-hmac-sha256",
    "hmac_sha256": "x-webhook-signature",
}


def _rejected(response, reason: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 400, response.text
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert body["detail"]
    if reason:
        assert body["reason"] == reason, body


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_valid_signature_is_stored_once_with_exact_bytes(client: Client, tenant: TenantHandle, provider: str) -> None:
    source = await new_source(client, tenant, provider)
    body, headers = _signed(provider, source["secret"], _payload(provider))
    first = await client.post(ingest_path(source), content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    again = await client.post(ingest_path(source), content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"id": first.json()["id"], "duplicate": True}

    events = await _events(client, tenant)
    assert len(events) == 1 and events[0]["type"] == EXPECTED_TYPE[provider]
    detail = await client.get(f"/api/v1/events/{first.json()['id']}", headers=tenant.auth)
    assert detail.content.split(b'"payload":', 1)[1].startswith(body)
    assert SIGNATURE_HEADER[provider] not in detail.json()["headers"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_wrong_secret_tampered_body_and_missing_header_are_rejected(
    client: Client, tenant: TenantHandle, provider: str
) -> None:
    source = await new_source(client, tenant, provider)
    other = await new_source(client, tenant, provider)
    path = ingest_path(source)
    body, headers = _signed(provider, other["secret"], _payload(provider))
    _rejected(await client.post(path, content=body, headers=headers), "no_matching_signature")

    body, headers = _signed(provider, source["secret"], _payload(provider))
    tampered = body.replace(b"}", b', "extra": 1}', 1)
    _rejected(await client.post(path, content=tampered, headers=headers), "no_matching_signature")

    without = {k: v for k, v in headers.items() if k != SIGNATURE_HEADER[provider]}
    _rejected(await client.post(path, content=body, headers=without), "missing_signature")
    assert await _events(client, tenant) == []


async def test_stripe_timestamp_tolerance(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    path = ingest_path(source)
    now = int(time.time())
    body, headers = signed_stripe(stripe_event(), source["secret"], timestamp=now - 301)
    _rejected(await client.post(path, content=body, headers=headers), "timestamp_too_old")
    body, headers = signed_stripe(stripe_event(), source["secret"], timestamp=now + 3600)
    _rejected(await client.post(path, content=body, headers=headers), "timestamp_in_future")
    body, headers = signed_stripe(stripe_event(), source["secret"], timestamp=now - 280)
    assert (await client.post(path, content=body, headers=headers)).status_code == 200
    assert len(await _events(client, tenant)) == 1


async def test_rotated_secret_old_and_new_pass_until_the_old_expires(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    path, old = ingest_path(source), source["secret"]
    added = await client.post(f"/api/v1/sources/{source['id']}/secrets", json={"expire_previous_after_seconds": 3600}, headers=tenant.auth)
    new = added.json()["secret"]
    for secret in (old, new):
        body, headers = signed_stripe(stripe_event(), secret)
        assert (await client.post(path, content=body, headers=headers)).status_code == 200

    expiring = await client.post(f"/api/v1/sources/{source['id']}/secrets", json={"secret": new + "x", "expire_previous_after_seconds": 0}, headers=tenant.auth)
    assert expiring.status_code == 201
    body, headers = signed_stripe(stripe_event(), old)
    _rejected(await client.post(path, content=body, headers=headers), "no_matching_signature")
    body, headers = signed_stripe(stripe_event(), new + "x")
    assert (await client.post(path, content=body, headers=headers)).status_code == 200
    assert len(await _events(client, tenant)) == 3


async def test_oversized_body_is_413_and_not_stored(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    event = stripe_event(padding="x" * 1_100_000)
    body, headers = signed_stripe(event, source["secret"])
    response = await client.post(ingest_path(source), content=body, headers=headers)
    assert response.status_code == 413
    assert "1048576" in response.json()["detail"]
    assert await _events(client, tenant) == []


async def test_a_github_webhook_left_on_the_form_content_type_is_stored_as_its_json(client: Client, tenant: TenantHandle) -> None:
    """GitHub's default content type: the event is the form's url-encoded ``payload`` field, and the
    signature covers the form as sent. GitHub does not redeliver, so a 400 here would lose it."""
    source = await new_source(client, tenant, "github")
    event = json.dumps(_payload("github") | {"title": "a & b = c + d", "emoji": "\u2603"}).encode()
    form = urlencode({"payload": event}).encode()
    headers = {"content-type": "application/x-www-form-urlencoded", "x-hub-signature-256": "sha256=" + _hmac(source["secret"], form).hex(),
               "x-github-event": "pull_request", "x-github-delivery": str(uuid.uuid4())}
    stored = await client.post(ingest_path(source), content=form, headers=headers)
    assert stored.status_code == 200, stored.text
    detail = await client.get(f"/api/v1/events/{stored.json()['id']}", headers=tenant.auth)
    assert detail.json()["type"] == "pull_request.opened" and detail.content.split(b'"payload":', 1)[1].startswith(event)
    assert detail.json()["headers"]["content-type"] == "application/json"  # what is stored is the JSON, not the form

    tampered = form.replace(b"opened", b"closed")
    _rejected(await client.post(ingest_path(source), content=tampered, headers=headers), "no_matching_signature")
    empty = b"other=1"
    no_payload = {**headers, "x-hub-signature-256": "sha256=" + _hmac(source["secret"], empty).hex()}
    missing = await client.post(ingest_path(source), content=empty, headers=no_payload)
    assert missing.status_code == 400 and missing.json()["type"].endswith("/invalid-form")


async def test_a_standard_webhooks_sender_that_signs_with_ed25519_is_verified_with_its_public_key(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant, "standard_webhooks")
    private = Ed25519PrivateKey.generate()
    public = "whpk_" + base64.b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    added = await client.post(f"/api/v1/sources/{source['id']}/secrets", json={"secret": public, "expire_previous_after_seconds": 0},
                              headers=tenant.auth)
    assert added.status_code == 201, added.text
    body, msg_id, stamp = json.dumps(_payload("standard_webhooks")).encode(), f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    signature = "v1a," + base64.b64encode(private.sign(f"{msg_id}.{stamp}.".encode() + body)).decode()
    headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
    stored = await client.post(ingest_path(source), content=body, headers=headers)
    assert stored.status_code == 200, stored.text
    forged = {**headers, "webhook-id": f"msg_{uuid.uuid4().hex}"}
    _rejected(await client.post(ingest_path(source), content=body, headers=forged), "no_matching_signature")
    refused = await client.post(f"/api/v1/sources/{source['id']}/secrets", json={"secret": "whpk_AAAA"}, headers=tenant.auth)
    assert refused.status_code == 422 and "whpk_" in refused.json()["detail"]


async def test_a_body_sent_as_xml_is_told_to_use_json(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant, "shopify")
    body = b"<?xml version='1.0'?><order><id>1</id></order>"
    headers = {"content-type": "application/xml", "x-shopify-hmac-sha256": base64.b64encode(_hmac(source["secret"], body)).decode(),
               "x-shopify-topic": "orders/create", "x-shopify-webhook-id": str(uuid.uuid4())}
    refused = await client.post(ingest_path(source), content=body, headers=headers)
    assert refused.status_code == 400 and "set the webhook's format to JSON" in refused.json()["detail"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", "\u00e9t\u00e9".encode("latin-1")])
async def test_unparsable_body_is_400(client: Client, tenant: TenantHandle, body: bytes) -> None:
    source = await new_source(client, tenant, "hmac_sha256")
    headers = {"x-webhook-signature": _hmac(source["secret"], body).hex()}
    response = await client.post(ingest_path(source), content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert await _events(client, tenant) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"id": "evt_a\u0000b"}, "id"), ({"type": "charge.\u0000"}, "type"),
     ({"type": "charge.failed", "data": {"object": {"customer": "cus_\u0000"}}}, "customer")],
)
async def test_a_nul_character_in_a_stored_field_is_400_and_spoils_no_neighbour(
    client: Client, tenant: TenantHandle, changes: dict[str, Any], field: str
) -> None:
    """Postgres text cannot hold NUL: the sender's mistake, answered 400; events committed in the
    same moment (one group commit) are stored all the same."""
    source = await new_source(client, tenant)
    bad, good = signed_stripe(stripe_event(**changes), source["secret"]), signed_stripe(stripe_event(), source["secret"])
    responses = await asyncio.gather(*(client.post(ingest_path(source), content=b, headers=h) for b, h in (good, bad, good)))
    assert [r.status_code for r in responses] == [200, 400, 200], [r.text for r in responses]
    assert responses[1].json()["type"].endswith("invalid-json") and field in responses[1].json()["detail"]
    assert len(await _events(client, tenant)) == 1


async def test_an_amount_beyond_64_bits_is_left_out_and_spoils_no_neighbour(client: Client, tenant: TenantHandle) -> None:
    """The amount is a fact for anomaly detection, not the event: one the column cannot hold is
    absent, as any malformed fact is, instead of failing the group commit it joined."""
    source = await new_source(client, tenant)
    huge = stripe_event(type="charge.succeeded", data={"object": {"amount": 10**20, "customer": "cus_big"}})
    sent = [signed_stripe(event, source["secret"]) for event in (stripe_event(), huge, stripe_event())]
    responses = await asyncio.gather(*(client.post(ingest_path(source), content=b, headers=h) for b, h in sent))
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert len(await _events(client, tenant)) == 3
    assert stripe_facts("charge.succeeded", huge).amount is None and stripe_facts("charge.succeeded", huge).customer == "cus_big"


async def test_unknown_token_is_404(client: Client) -> None:
    for token in ("A" * 32, "abc%00def", "abc%0Adef", "A" * 65, "A" * 4000):  # NUL cannot be looked up in Postgres at all
        response = await client.post("/ingest/" + token, content=b"{}")
        assert response.status_code == 404 and response.json()["type"].endswith("unknown-source"), (token, response.text)


async def test_made_up_tokens_do_not_flush_the_sources_from_the_cache(
    client: Client, tenant: TenantHandle, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone can send to made-up ingest URLs, and each miss is cached: when the cache is full the
    misses go, not the sources every tenant's next event would have to reload and decrypt."""
    monkeypatch.setattr(directory_module, "_MAX_ENTRIES", 5)
    source = await new_source(client, tenant)
    token = source["ingest_url"].rsplit("/", 1)[1]
    engine = create_engine(database_url, pool_size=1)
    directory = SourceDirectory(session_factory(engine), SecretBox(SECRET_KEY), ttl=60)
    try:
        known = await directory.find(token)
        assert known is not None and known.secrets[0][0] == source["secret"]
        for n in range(12):
            assert await directory.find(f"made-up-{n}") is None
        assert directory._cache[token].key is known  # still cached: no reload
        assert len(directory._cache) <= 5
    finally:
        await engine.dispose()


async def test_every_real_stripe_fixture_is_stored_with_its_priority(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    sent = {}
    for name in fixture_names():
        event = stripe_event(name)
        body, headers = signed_stripe(event, source["secret"])
        response = await client.post(ingest_path(source), content=body, headers=headers)
        assert response.status_code == 200, (name, response.text)
        sent[response.json()["id"]] = event
    events = await _events(client, tenant)
    assert len(events) == len(sent) == 71
    for stored in events:
        original = sent[stored["id"]]
        assert stored["external_id"] == original["id"] and stored["type"] == original["type"]
        assert stored["priority"] == classify(original["type"])
    priorities = {e["type"]: e["priority"] for e in events}
    assert priorities["charge.succeeded"] == "critical" and priorities["invoice.paid"] == "critical"
    assert priorities["customer.subscription.created"] == "high" and priorities["product.created"] == "low"


async def test_concurrent_duplicates_store_one_event(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    body, headers = signed_stripe(stripe_event(), source["secret"])
    responses = await asyncio.gather(*[client.post(ingest_path(source), content=body, headers=headers) for _ in range(8)])
    assert {r.status_code for r in responses} == {200}
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(await _events(client, tenant)) == 1


@pytest.mark.slow
async def test_postgres_down_answers_503_and_stores_nothing(redis_url: str) -> None:
    with ThrowawayPostgres() as server:
        await upgrade_async(server.url)
        app = create_app(make_settings(server.url, redis_url))
        async with AppClient(app) as client:
            tenant = await new_tenant(client)
            source = await new_source(client, tenant)
            body, headers = signed_stripe(stripe_event(), source["secret"])
            assert (await client.post(ingest_path(source), content=body, headers=headers)).status_code == 200

            await asyncio.to_thread(server.stop)
            lost_body, lost_headers = signed_stripe(stripe_event(), source["secret"])
            down = await client.post(ingest_path(source), content=lost_body, headers=lost_headers)
            assert down.status_code == 503 and down.headers["retry-after"]
            assert down.json()["type"].endswith("storage-unavailable")

            await asyncio.to_thread(server.start)
            retried = await client.post(ingest_path(source), content=lost_body, headers=lost_headers)
            assert retried.status_code == 200 and retried.json()["duplicate"] is False
            assert len(await _events(client, tenant)) == 2


@pytest.mark.slow
async def test_sqlite_locked_answers_503_and_stores_nothing(tmp_path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'locked.db'}"
    await upgrade_async(url)
    app = create_app(make_settings(url, redis_url))
    async with AppClient(app) as client:
        tenant = await new_tenant(client)
        source = await new_source(client, tenant)
        await client.get("/api/v1/events", headers=tenant.auth)
        body, headers = signed_stripe(stripe_event(), source["secret"])
        await client.post(ingest_path(source), content=body, headers=headers)  # warm the source cache

        blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            lost_body, lost_headers = signed_stripe(stripe_event(), source["secret"])
            down = await client.post(ingest_path(source), content=lost_body, headers=lost_headers)
            assert down.status_code == 503
        finally:
            blocker.rollback()
            blocker.close()
        assert len(await _events(client, tenant)) == 1
        retried = await client.post(ingest_path(source), content=lost_body, headers=lost_headers)
        assert retried.status_code == 200 and retried.json()["duplicate"] is False
        assert len(await _events(client, tenant)) == 2


@pytest.mark.slow
async def test_management_api_answers_503_while_postgres_is_down(redis_url: str) -> None:
    with ThrowawayPostgres() as server:
        await upgrade_async(server.url)
        async with AppClient(create_app(make_settings(server.url, redis_url))) as client:
            tenant = await new_tenant(client)
            await asyncio.to_thread(server.stop)
            response = await client.get("/api/v1/sources", headers=tenant.auth)
            assert response.status_code == 503 and response.json()["type"].endswith("service-unavailable")
            await asyncio.to_thread(server.start)
            assert (await client.get("/api/v1/sources", headers=tenant.auth)).status_code == 200
