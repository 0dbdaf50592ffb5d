"""Alembic environment: runs migrations on the async engine given by ``gateway.migrate``."""

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
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_main(context.config.get_main_option("sqlalchemy.url")))
