"""``SELECT … FOR UPDATE`` serialises a read-then-write on both backends: SQLite, which has no row
locks, takes its database write lock instead, so a concurrent writer waits rather than having its
commit overwritten (the replay-cancel race the embedded mode once had)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update

from gateway.database import create_engine, session_factory
from tenants.models import Tenant


async def test_a_locked_read_then_write_does_not_lose_a_concurrent_update(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=2)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            session.add(Tenant(name="0"))
        locked = asyncio.Event()

        async def read_then_write() -> None:
            async with sessions() as session, session.begin():
                tenant = await session.scalar(select(Tenant).with_for_update())
                assert tenant is not None
                locked.set()
                await asyncio.sleep(0.3)  # the other writer tries now, and must wait
                tenant.name = str(int(tenant.name) + 1)

        async def concurrent_write() -> None:
            await locked.wait()
            async with sessions() as session, session.begin():
                await session.execute(update(Tenant).values(name=Tenant.name + "0"))

        await asyncio.gather(read_then_write(), concurrent_write())
        async with sessions() as session:
            assert await session.scalar(select(Tenant.name)) == "10"  # "0" + 1 = "1", then "1" + "0"
    finally:
        await engine.dispose()
