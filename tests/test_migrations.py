"""Alembic is the only way the schema changes: it must build, tear down and rebuild both backends."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from gateway.app import create_app
from gateway.database import Base, create_engine, session_factory
from gateway.health import readiness
from gateway.migrate import alembic_config, upgrade_async
from tests.conftest import make_settings
from tests.support.client import AppClient
from tests.support.services import create_database, drop_database, test_postgres_url, test_redis_url


async def _tables(url: str) -> set[str]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def _roundtrip(url: str) -> None:
    await upgrade_async(url)
    expected = set(Base.metadata.tables)
    assert expected <= await _tables(url)
    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    assert not expected & await _tables(url)
    await upgrade_async(url)
    assert expected <= await _tables(url)


@pytest.fixture(params=["postgres", "sqlite"])
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of its own, with no schema: the shared test databases are migrated already."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
        return
    admin, name = test_postgres_url(), f"hookgate_mig_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name)
    yield url
    await drop_database(admin, name)


async def test_migrations_roundtrip(empty_database: str) -> None:
    await _roundtrip(empty_database)


def test_models_and_migrations_agree() -> None:
    """Autogenerate finds nothing to do: no model change without a migration."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/diff.db"
        asyncio.run(upgrade_async(url))

        async def diff() -> list[object]:
            engine = create_engine(url, pool_size=1)
            try:
                async with engine.connect() as connection:
                    return await connection.run_sync(
                        lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"render_as_batch": True}), Base.metadata)
                    )
            finally:
                await engine.dispose()

        assert asyncio.run(diff()) == []


async def test_0007_raises_endpoint_rates_below_the_floor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Rates the API accepted before its 0.001/s floor overflowed the limiter: raised to the floor."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0006")
    tenant = uuid.uuid4().hex
    rates = {uuid.uuid4().hex: rate for rate in (1e-320, 0.0005, 0.001, 2.5, None)}
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO tenants (id, name, created_at) VALUES (:id, 't', '2026-12-07 00:00:00.000000')"), {"id": tenant})
            for endpoint, rate in rates.items():
                await connection.execute(
                    text("INSERT INTO endpoints (id, tenant_id, url, description, event_types, rate_limit_per_second, enabled, created_at) "
                         "VALUES (:id, :tenant, 'https://example.com/', '', '[\"*\"]', :rate, 1, '2026-12-07 00:00:00.000000')"),
                    {"id": endpoint, "tenant": tenant, "rate": rate},
                )
        await upgrade_async(url)
        async with engine.connect() as connection:
            stored = dict((await connection.execute(text("SELECT id, rate_limit_per_second FROM endpoints"))).all())
    finally:
        await engine.dispose()
    assert stored == {endpoint: 0.001 if rate is not None and rate < 0.001 else rate for endpoint, rate in rates.items()}


_ROWS_AT_0003 = [
    ("tenants", "INSERT INTO tenants (id, name, created_at) VALUES (:tenant, 't', :now)"),
    ("endpoints", "INSERT INTO endpoints (id, tenant_id, url, description, event_types, enabled, created_at) "
                  "VALUES (:endpoint, :tenant, 'https://example.com/', '', '[\"*\"]', :yes, :now)"),
    ("events", "INSERT INTO events (id, tenant_id, external_id, type, priority, body, headers, received_at) "
               "VALUES (:event, :tenant, 'evt_1', 'charge.succeeded', 'normal', :body, '{}', :now)"),
    ("deliveries", "INSERT INTO deliveries (id, tenant_id, event_id, endpoint_id, priority, is_replay, status, attempt_count, created_at) "
                   "VALUES (:delivery, :tenant, :event, :endpoint, 'normal', :no, 'succeeded', 1, :now)"),
    ("attempts", "INSERT INTO attempts (id, tenant_id, delivery_id, number, started_at, duration_ms, status_code) "
                 "VALUES (:attempt, :tenant, :delivery, 1, :now, 5, 200)"),
]


async def _counts(url: str) -> dict[str, int]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return {table: (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one() for table, _ in _ROWS_AT_0003}
    finally:
        await engine.dispose()


async def test_migrations_keep_rows(empty_database: str) -> None:
    """Up from 0003 and down to it again, on a database that holds a row in each table: every row stays
    (on SQLite a table rebuilt with foreign keys enforced once deleted everything that referenced it)."""
    url = empty_database
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0003")
    ids = {name: uuid.uuid4().hex for name in ("tenant", "endpoint", "event", "delivery", "attempt")}
    values = {**ids, "now": datetime(2026, 12, 7, tzinfo=UTC), "body": b"{}", "yes": True, "no": False}
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for _, statement in _ROWS_AT_0003:
                await connection.execute(text(statement), values)
    finally:
        await engine.dispose()
    one_each = {table: 1 for table, _ in _ROWS_AT_0003}
    assert await _counts(url) == one_each
    await upgrade_async(url)
    assert await _counts(url) == one_each
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0003")
    assert await _counts(url) == one_each
    await upgrade_async(url)
    assert await _counts(url) == one_each



async def test_readiness_wants_the_schema_this_code_needs_or_a_newer_one(empty_database: str) -> None:
    """Not ready on an empty or an older schema (pods rolled out before `hookgate migrate`); ready on
    a newer one (the old pods of a rollout, after the new release's migration ran first)."""
    url = empty_database
    engine = create_engine(url, pool_size=1)
    sessions = session_factory(engine)
    try:
        assert await readiness(sessions, None) == {"database": "not migrated"}
        async with AppClient(create_app(make_settings(url, test_redis_url()))) as client:
            answer = await client.get("/readyz")
        assert answer.status_code == 503 and "run hookgate migrate" in answer.json()["detail"]
        await asyncio.to_thread(command.upgrade, alembic_config(url), "0007")
        assert await readiness(sessions, None) == {"database": "not migrated"}
        await upgrade_async(url)
        assert await readiness(sessions, None) == {"database": "ok"}
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '0099_of_a_newer_release'"))
        assert await readiness(sessions, None) == {"database": "ok"}
    finally:
        await engine.dispose()
