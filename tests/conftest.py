"""Shared fixtures: real Postgres and Redis (or throwaway ones), schemas built by Alembic,
every test starting from empty tables, on both backends where it says ``backend``; and the
delivery stack (app + worker on Postgres, app with its in-process dispatcher on SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from gateway.app import create_app
from gateway.database import Base, create_engine
from gateway.migrate import upgrade_async
from gateway.settings import Settings
from gateway.worker import run_worker
from tests.support.client import AppClient
from tests.support.services import (
    ThrowawayPostgres,
    ThrowawayRedis,
    create_database,
    drop_database,
    free_port,
    fresh_services,
    test_postgres_url,
    test_redis_url,
)
from tests.support.stripe_events import signed_stripe, stripe_event

OPERATOR_KEY = "hgop_test-operator-key"
SECRET_KEY = "test-secret-key-for-encryption-at-rest"


@pytest.fixture(scope="session")
def redis_url() -> str:
    return test_redis_url()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on a database the test owns: flushed before and after."""
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def production_env() -> AsyncIterator[dict[str, str]]:
    """Environment for real ``hookgate serve``/``worker`` processes: a database and a Redis db of their own."""
    async with fresh_services("hookgate_proc", redis_db=2) as (url, redis_url):
        port = free_port()
        yield {
            "HOOKGATE_DATABASE_URL": url,
            "HOOKGATE_REDIS_URL": redis_url,
            "HOOKGATE_SECRET_KEY": SECRET_KEY,
            "HOOKGATE_OPERATOR_KEY": OPERATOR_KEY,
            "HOOKGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "HOOKGATE_ALLOW_PRIVATE_ENDPOINTS": "true",
            "HOOKGATE_RETRY_SCHEDULE": "0,0.5,0.5,0.5,0.5",
            "HOOKGATE_LEASE_SECONDS": "6",
            "HOOKGATE_SWEEPER_INTERVAL_SECONDS": "0.5",
            "HOOKGATE_DELIVERY_TIMEOUT": "5",
            "HOOKGATE_WORKER_METRICS_PORT": "0",
            "PORT": str(port),
        }


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A private Postgres server the test may stop and restart."""
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    """A private Redis server the test may stop, restart or flush."""
    with ThrowawayRedis() as server:
        yield server


@pytest.fixture
async def private_redis_client(throwaway_redis: ThrowawayRedis) -> AsyncIterator[aioredis.Redis]:
    """A client on a private server, for tests that count the server's calls (``INFO commandstats``):
    nobody else's calls are counted."""
    client = aioredis.from_url(throwaway_redis.url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def postgres_database_url() -> AsyncIterator[str]:
    """A fresh database for this test session, migrated to head."""
    admin = test_postgres_url()
    name = f"hookgate_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(admin, name)
    await upgrade_async(url)
    yield url
    await drop_database(admin, name)


@pytest.fixture(scope="session")
async def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'hookgate.db'}"
    await upgrade_async(url)
    return url


async def _empty_tables(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
            else:
                for table in tables:
                    await connection.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def migrated_database_url(backend: str, request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{backend}_database_url")


@pytest.fixture
async def database_url(migrated_database_url: str) -> str:
    """The backend's database with every table emptied: each test starts clean."""
    await _empty_tables(migrated_database_url)
    return migrated_database_url


def make_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    embedded = database_url.startswith("sqlite")
    values: dict[str, Any] = {
        "mode": "embedded" if embedded else "production",
        "database_url": database_url,
        "redis_url": redis_url,
        "secret_key": SECRET_KEY,
        "operator_key": OPERATOR_KEY,
        "public_url": "http://testserver.local",
        "allow_private_endpoints": True,
        "worker_metrics_port": 0,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AppClient(app) as test_client:
        yield test_client


@dataclass
class TenantHandle:
    id: str
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}


async def new_tenant(client: AsyncTestClient[Litestar], name: str = "Acme") -> TenantHandle:
    response = await client.post(
        "/api/v1/tenants", json={"name": name}, headers={"authorization": f"Bearer {OPERATOR_KEY}"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return TenantHandle(body["id"], body["api_key"])


async def new_source(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, provider: str = "stripe", **fields: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/sources", json={"name": f"{provider} source", "provider": provider, **fields}, headers=tenant.auth
    )
    assert response.status_code == 201, response.text
    return response.json()


def ingest_path(source: dict[str, Any]) -> str:
    """The path part of a source's ingest URL (the test client serves any host)."""
    return "/ingest/" + source["ingest_url"].rsplit("/", 1)[1]


@pytest.fixture
async def tenant(client: AsyncTestClient[Litestar]) -> TenantHandle:
    return await new_tenant(client)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# Schedules and cool-downs short enough for tests.
FAST = {
    "retry_schedule": "0,0.3,0.3",
    "delivery_timeout": 1.0,
    "delivery_connect_timeout": 1.0,
    "breaker_failure_threshold": 3,
    "breaker_cooldown_seconds": 1.0,
    "breaker_max_cooldown_seconds": 2.0,
    "sweeper_interval_seconds": 0.2,
    "lease_seconds": 5.0,
}


@dataclass
class Stack:
    client: AsyncTestClient[Litestar]
    settings: Settings

    async def endpoint(self, tenant: TenantHandle, url: str, **fields: Any) -> dict[str, Any]:
        response = await self.client.post("/api/v1/endpoints", json={"url": url, **fields}, headers=tenant.auth)
        assert response.status_code == 201, response.text
        return response.json()

    async def ingest(self, source: dict[str, Any], event: dict[str, Any] | None = None) -> str:
        body, headers = signed_stripe(event or stripe_event(), source["secret"])
        response = await self.client.post(ingest_path(source), content=body, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    async def deliveries(self, tenant: TenantHandle, **filters: str) -> list[dict[str, Any]]:
        """Every delivery matching the filters, following the cursor through all pages."""
        found: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": "200", **filters}
        while True:
            page = (await self.client.get("/api/v1/deliveries", params=params, headers=tenant.auth)).json()
            found += page["data"]
            if not page["next_cursor"]:
                return found
            params["cursor"] = page["next_cursor"]

    async def settled(self, tenant: TenantHandle, count: int, status: str = "succeeded", timeout: float = 20.0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []

        async def check() -> bool:
            nonlocal found
            found = await self.deliveries(tenant, status=status)
            return len(found) >= count

        deadline = asyncio.get_running_loop().time() + timeout
        while not await check():
            assert asyncio.get_running_loop().time() < deadline, f"{len(found)}/{count} deliveries {status}"
            await asyncio.sleep(0.05)
        return found


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def stack_factory(database_url: str, redis_url: str, redis_client: Any) -> AsyncIterator[Callable[..., Any]]:
    """Builds the app (and, on Postgres, a worker) with the fast settings plus overrides."""
    stacks: list[contextlib.AsyncExitStack] = []

    async def build(**overrides: Any) -> Stack:
        options = {**FAST, "redis_url": redis_url, **overrides}
        settings = make_settings(database_url, options.pop("redis_url"), **options)
        exit_stack = contextlib.AsyncExitStack()
        stacks.append(exit_stack)
        client = await exit_stack.enter_async_context(AppClient(create_app(settings)))
        if not settings.is_embedded:
            await exit_stack.enter_async_context(running_worker(settings))
        return Stack(client, settings)

    yield build
    for exit_stack in reversed(stacks):
        await exit_stack.aclose()


@pytest.fixture
async def stack(stack_factory: Callable[..., Any]) -> Stack:
    return await stack_factory()
