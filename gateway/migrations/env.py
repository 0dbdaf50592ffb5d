"""Alembic environment: runs migrations on an async engine for the URL ``gateway.migrate`` gives."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

# Every model module, so that each table is registered on the metadata autogenerate compares.
import dashboard.models  # noqa: F401
import delivery.replays.models  # noqa: F401
import gateway.events.models  # noqa: F401
import gateway.idempotency.models  # noqa: F401
import gateway.ingest.tallies  # noqa: F401
import ml.online.models  # noqa: F401
import tenants.endpoints.models  # noqa: F401
import tenants.models  # noqa: F401
import tenants.sources.models  # noqa: F401
from gateway.database import Base, create_engine


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode changes a SQLite table by copying it and dropping the old one; with foreign keys
        # enforced, the drop deletes every row that references it ON DELETE CASCADE (0004 emptied
        # `attempts` that way). Off for the migration (the pragma is a no-op inside a transaction, so
        # before it begins), and every reference checked before it commits.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite and (dangling := connection.exec_driver_sql("PRAGMA foreign_key_check").all()):
            raise RuntimeError(f"the migration left rows that reference missing rows (table, rowid, parent): {dangling[:5]}")


async def _main(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_main(context.config.get_main_option("sqlalchemy.url")))
