"""The SSRF matrix through the product, with ``HOOKGATE_ALLOW_PRIVATE_ENDPOINTS`` off.

At registration: every refused URL of the guard's own table (``tests/test_delivery_primitives.py``
``REFUSED``: loopback, RFC 1918, link-local, IPv6 loopback and unique-local, 0.0.0.0, decimal,
hex and octal spellings, IPv4-mapped IPv6, …) is a 422 problem on create and on update.
At send: endpoints that reach a private address anyway — a hostname that resolves to one (this
machine's own name), or URLs stored while the operator allowed private targets — get attempts
recorded with a ``refused:`` error, and the real receiver listening there gets nothing.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_address
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from delivery import ssrf
from gateway.app import create_app
from tests.conftest import Stack, make_settings, new_source, new_tenant
from tests.support.client import AppClient
from tests.support.receiver import Script, Server
from tests.test_delivery_primitives import REFUSED

Client = AsyncTestClient[Litestar]


@pytest.fixture
def backend() -> str:
    return "postgres"  # the send-time half needs the worker


@pytest.fixture
async def strict_client(database_url: str, redis_url: str) -> AsyncIterator[Client]:
    async with AppClient(create_app(make_settings(database_url, redis_url, allow_private_endpoints=False))) as client:
        yield client


async def test_every_refused_url_is_a_422_problem_at_registration(strict_client: Client) -> None:
    tenant = await new_tenant(strict_client)
    safe = await strict_client.post("/api/v1/endpoints", json={"url": "https://example.com/hook"}, headers=tenant.auth)
    path = f"/api/v1/endpoints/{safe.json()['id']}"
    for url, message in REFUSED:
        for response in (
            await strict_client.post("/api/v1/endpoints", json={"url": url}, headers=tenant.auth),
            await strict_client.patch(path, json={"url": url}, headers=tenant.auth),
        ):
            assert response.status_code == 422, (url, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["detail"] == message
    assert [e["url"] for e in (await strict_client.get("/api/v1/endpoints", headers=tenant.auth)).json()["data"]] == [
        "https://example.com/hook"
    ]


def _private_hostname() -> str:
    """This machine's own name: not refused by its spelling, yet it resolves to a local address."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    assert addresses and all(ssrf.is_forbidden(ip_address(a)) for a in addresses), (
        f"{name} resolves to {addresses}: the send-time case needs a hostname that resolves to a private address"
    )
    ssrf.check_url(f"http://{name}/", allow_private=False)  # registration lets it through
    return name


async def test_private_targets_are_refused_at_send_and_recorded_as_attempt_errors(
    client: Client, stack_factory: Callable[..., Any]
) -> None:
    """``client`` allows private targets (how the URLs got stored); the strict stack delivers."""
    name = _private_hostname()
    async with Server(Script()) as receiver:
        urls = [
            f"http://{name}:{receiver.port}/hook",  # resolves to a private address only at send time
            f"http://127.0.0.1:{receiver.port}/hook",
            f"http://0x7f000001:{receiver.port}/hook",
            f"http://１２７.０.０.１:{receiver.port}/hook",  # aiohttp connects to it as a literal, past the resolver
            f"http://[::ffff:127.0.0.1]:{receiver.port}/hook",
            f"http://localhost:{receiver.port}/hook",
        ]
        tenant = await new_tenant(client)
        by_endpoint = {}
        for url in urls:
            created = await client.post("/api/v1/endpoints", json={"url": url}, headers=tenant.auth)
            assert created.status_code == 201, created.text
            by_endpoint[created.json()["id"]] = url
        strict: Stack = await stack_factory(allow_private_endpoints=False, retry_schedule="0,0.2")
        await strict.ingest(await new_source(strict.client, tenant))
        dead = await strict.settled(tenant, len(urls), status="dead")
        errors = {}
        for delivery in dead:
            attempts = (await strict.client.get(f"/api/v1/deliveries/{delivery['id']}/attempts", headers=tenant.auth)).json()["data"]
            errors[by_endpoint[delivery["endpoint_id"]]] = [attempt["error"] for attempt in attempts]
        assert set(errors) == set(urls)
        assert all(len(found) == 2 and all(e.startswith("refused: ") for e in found) for found in errors.values()), errors
        assert errors[urls[0]][0].startswith(f"refused: {name} resolves to a "), errors[urls[0]]
        assert receiver.requests == []  # nothing reached the receiver listening there
