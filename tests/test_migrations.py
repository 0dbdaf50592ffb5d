"""Alembic is the only way the schema changes: it must build, tear down and rebuild both backends."""

from __future__ import annotations

import asyncio
import tempfile
import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from gateway.database import Base, create_engine
from gateway.migrate import alembic_config, upgrade_async
from tests.support.services import create_database, drop_database, test_postgres_url


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


async def test_migrations_roundtrip_on_postgres() -> None:
    admin, name = test_postgres_url(), f"hookgate_mig_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name)
    try:
        await _roundtrip(url)
    finally:
        await drop_database(admin, name)


async def test_migrations_roundtrip_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    await _roundtrip(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")


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
