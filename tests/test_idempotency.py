"""``Idempotency-Key`` on management-API POSTs, on both backends: one action per key and request,
the first answer replayed, reuse with another request refused, keys scoped to the credential."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.database import create_engine, utcnow
from gateway.idempotency.middleware import IdempotencyMiddleware
from gateway.idempotency.models import IdempotentRequest
from tenants.crypto import SecretBox
from tenants.models import ApiKey, Tenant
from tests.conftest import OPERATOR_KEY, SECRET_KEY, Stack, TenantHandle, new_source, new_tenant
from tests.support.database import connect
from tests.support.receiver import Script, Server
from tests.support.services import free_port
from tests.support.stripe_events import stripe_event

Client = AsyncTestClient[Litestar]
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}


async def _count(database_url: str, statement: Any) -> int:
    async with connect(database_url) as connection:
        return int((await connection.execute(statement)).scalar_one())


async def _execute(database_url: str, statement: Any) -> None:
    async with connect(database_url, write=True) as connection:
        await connection.execute(statement)


async def test_the_same_key_and_request_acts_once_and_replays_the_answer(client: Client, database_url: str) -> None:
    headers = {**OPERATOR, "idempotency-key": "create-acme-1"}
    first = await client.post("/api/v1/tenants", json={"name": "Once"}, headers=headers)
    again = await client.post("/api/v1/tenants", json={"name": "Once"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true" and again.headers["content-type"] == first.headers["content-type"]
    assert await _count(database_url, select(func.count()).select_from(Tenant).where(Tenant.name == "Once")) == 1

    stored = await _count(database_url, select(func.count()).select_from(IdempotentRequest))
    assert stored == 1
    engine = create_engine(database_url, pool_size=1)
    async with engine.connect() as connection:
        body = (await connection.execute(select(IdempotentRequest.body))).scalar_one()
    await engine.dispose()
    assert first.json()["api_key"].encode() not in body  # the key shown once is not kept in plaintext

    without = [await client.post("/api/v1/tenants", json={"name": "Twice"}, headers=OPERATOR) for _ in range(2)]
    assert without[0].json()["id"] != without[1].json()["id"]  # no key: every POST acts


async def test_a_key_reused_with_another_request_is_refused(client: Client, tenant: TenantHandle) -> None:
    headers = {**tenant.auth, "idempotency-key": "k1"}
    assert (await client.post("/api/v1/sources", json={"name": "a", "provider": "stripe"}, headers=headers)).status_code == 201
    reused = await client.post("/api/v1/sources", json={"name": "b", "provider": "stripe"}, headers=headers)
    assert reused.status_code == 422 and reused.json()["type"].endswith("/idempotency-key-reused")
    elsewhere = await client.post("/api/v1/endpoints", json={"url": "http://127.0.0.1:9/"}, headers=headers)
    assert elsewhere.status_code == 422  # another path is another request
    too_long = await client.post("/api/v1/sources", json={"name": "c", "provider": "stripe"}, headers={**tenant.auth, "idempotency-key": "x" * 256})
    assert too_long.status_code == 400 and too_long.headers["content-type"].startswith("application/problem+json")
    sources = (await client.get("/api/v1/sources", headers=tenant.auth)).json()["data"]
    assert [s["name"] for s in sources] == ["a"]


async def test_keys_are_scoped_to_the_credential(client: Client) -> None:
    alice, bob = await new_tenant(client, "Alice"), await new_tenant(client, "Bob")
    for who in (alice, bob):
        response = await client.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers={**who.auth, "idempotency-key": "same"})
        assert response.status_code == 201 and "idempotent-replayed" not in response.headers
    for who in (alice, bob):
        assert len((await client.get("/api/v1/sources", headers=who.auth)).json()["data"]) == 1


async def test_client_errors_are_kept_like_successes(client: Client, tenant: TenantHandle) -> None:
    headers = {**tenant.auth, "idempotency-key": "bad-url"}
    first = await client.post("/api/v1/endpoints", json={"url": "not a url"}, headers=headers)
    again = await client.post("/api/v1/endpoints", json={"url": "not a url"}, headers=headers)
    assert 400 <= first.status_code < 500 and (again.status_code, again.json()) == (first.status_code, first.json())
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_request_refused_before_its_handler_ran_leaves_the_key_free(
    client: Client, tenant: TenantHandle, database_url: str
) -> None:
    """Stripe's rule: a body that failed validation, or an undeclared parameter, acted on nothing,
    so the corrected request may use the key; what the handler itself refuses is kept (above)."""
    headers = {**tenant.auth, "idempotency-key": "fix-and-retry"}
    invalid = await client.post("/api/v1/sources", json={"name": "s", "provider": 7}, headers=headers)
    assert invalid.status_code == 400 and invalid.json()["type"].endswith("/validation-error")
    unknown = await client.post("/api/v1/sources?dry=1", json={"name": "s", "provider": "stripe"}, headers=headers)
    assert unknown.status_code == 400 and unknown.json()["type"].endswith("/unknown-parameter")
    assert await _count(database_url, select(func.count()).select_from(IdempotentRequest)) == 0
    fixed = await client.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers=headers)
    again = await client.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers=headers)
    assert fixed.status_code == again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == fixed.json()


async def test_concurrent_requests_with_one_key_act_once(client: Client, database_url: str) -> None:
    headers = {**OPERATOR, "idempotency-key": "race"}
    answers = await asyncio.gather(*(client.post("/api/v1/tenants", json={"name": "Race"}, headers=headers) for _ in range(6)))
    assert {a.status_code for a in answers} <= {201, 409}
    created = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(created) == 1
    assert await _count(database_url, select(func.count()).select_from(Tenant).where(Tenant.name == "Race")) == 1


async def test_a_replay_with_an_idempotency_key_is_one_replay(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script()) as receiver:
        await stack.endpoint(tenant, receiver.url)
        event_id = await stack.ingest(source, stripe_event("charge_succeeded"))
        headers = {**tenant.auth, "idempotency-key": "replay-after-fix"}
        answers = [await stack.client.post(f"/api/v1/events/{event_id}/replay", headers=headers) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert answers[1].json() == answers[2].json() == answers[0].json()
        replays = [d for d in await stack.deliveries(tenant, event_id=event_id) if d["is_replay"]]
        assert len(replays) == 1


async def test_a_key_whose_first_request_died_unanswered_is_released(client: Client, database_url: str) -> None:
    """A claim row without an answer is what a process killed mid-request leaves behind."""
    headers = {**OPERATOR, "idempotency-key": "orphan"}
    first = await client.post("/api/v1/tenants", json={"name": "Orphan"}, headers=headers)
    await _execute(database_url, update(IdempotentRequest).values(status_code=None, body=None))
    busy = await client.post("/api/v1/tenants", json={"name": "Orphan"}, headers=headers)
    assert busy.status_code == 409 and busy.json()["type"].endswith("/idempotency-key-in-progress")
    await _execute(database_url, update(IdempotentRequest).values(created_at=utcnow() - timedelta(minutes=3)))
    retried = await client.post("/api/v1/tenants", json={"name": "Orphan"}, headers=headers)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert retried.json()["id"] != first.json()["id"]  # acted again: the first answer was never kept


async def test_a_revoked_key_gets_no_kept_answer_and_strangers_keep_nothing(
    client: Client, tenant: TenantHandle, database_url: str
) -> None:
    """Keys are checked before a kept answer is replayed: one shown once may hold a secret."""
    headers = {**tenant.auth, "idempotency-key": "k-secret"}
    created = await client.post("/api/v1/endpoints", json={"url": "http://127.0.0.1:9/"}, headers=headers)
    assert created.status_code == 201 and created.json()["secret"]
    await _execute(database_url, update(ApiKey).values(revoked_at=utcnow()))
    again = await client.post("/api/v1/endpoints", json={"url": "http://127.0.0.1:9/"}, headers=headers)
    assert again.status_code == 401 and "idempotent-replayed" not in again.headers
    assert "secret" not in again.json() and again.headers["content-type"].startswith("application/problem+json")

    kept = await _count(database_url, select(func.count()).select_from(IdempotentRequest))
    for credential in ({}, {"authorization": "Bearer hgk_not-a-key"}, {"authorization": "Basic x"}):
        stranger = await client.post("/api/v1/tenants", json={"name": "X"}, headers={**credential, "idempotency-key": "s"})
        assert stranger.status_code == 401, stranger.text
    assert await _count(database_url, select(func.count()).select_from(IdempotentRequest)) == kept


async def test_an_upload_cut_short_is_not_acted_on_and_leaves_the_key_free(database_url: str) -> None:
    """The client sent part of the body and went away: acting on the part (a 400 kept for 24 h)
    would refuse the client's retry with the whole body as another request."""
    called: list[Any] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    engine = create_engine(database_url, pool_size=1)
    middleware = IdempotencyMiddleware(route, async_sessionmaker(engine), SecretBox(SECRET_KEY), max_body=1000, operator_key=OPERATOR_KEY)
    messages = iter([{"type": "http.request", "body": b'{"name": "Cu', "more_body": True}, {"type": "http.disconnect"}])
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {OPERATOR_KEY}".encode()), (b"idempotency-key", b"cut")]
    try:
        await middleware({"type": "http", "method": "POST", "path": "/api/v1/tenants", "headers": headers}, receive, send)
    finally:
        await engine.dispose()
    assert called == [] and sent == []
    assert await _count(database_url, select(func.count()).select_from(IdempotentRequest)) == 0


async def test_with_the_database_unreachable_it_answers_503_itself() -> None:
    """Raised instead, the error passed the HTTP metrics middleware as a 200 (it records before the
    app's handler answers): a database outage vanished from the API's 5xx panel."""
    called: list[Any] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none", pool_size=1)  # nothing listens there
    middleware = IdempotencyMiddleware(route, async_sessionmaker(engine), SecretBox(SECRET_KEY), max_body=1000, operator_key=OPERATOR_KEY)
    messages = iter([{"type": "http.request", "body": b'{"name": "Acme"}', "more_body": False}])
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"authorization", b"Bearer hgk_a_key_to_look_up"), (b"idempotency-key", b"k1")]
    try:
        await middleware({"type": "http", "method": "POST", "path": "/api/v1/endpoints", "headers": headers}, receive, send)
    finally:
        await engine.dispose()
    assert called == []
    start = sent[0]
    assert start["status"] == 503 and (b"retry-after", b"5") in start["headers"]
    assert (b"content-type", b"application/problem+json") in start["headers"]
