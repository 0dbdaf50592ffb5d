"""Shared fixtures: real Postgres and Redis (or throwaway ones), schemas built by Alembic,
every test starting from empty tables, on both backends where it says ``backend``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
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
from tests.support.services import create_database, drop_database, test_postgres_url, test_redis_url

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
    async with AsyncTestClient(app) as test_client:
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
