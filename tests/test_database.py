"""``among``: the rows of ``column IN :values``, as one SQL text on Postgres whatever the number of
values (so asyncpg prepares it once per connection rather than once per length), from a statement
built once."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, select

from gateway.database import among, create_engine, session_factory
from tenants.models import Tenant


async def test_among_selects_exactly_the_given_rows(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=2)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            tenants = [Tenant(name=str(n)) for n in range(12)]
            session.add_all(tenants)
        statement = select(Tenant.id).where(among(engine.dialect.name, Tenant.id, "ids"))
        async with sessions() as session:
            for wanted in ([], tenants[:1], tenants[3:10], tenants):
                ids = [tenant.id for tenant in wanted]
                assert set(await session.scalars(statement, {"ids": ids})) == set(ids)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_among_sends_one_statement_text_whatever_the_length(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    sent: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _record(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            tenants = [Tenant(name=str(n)) for n in range(30)]
            session.add_all(tenants)
        sent.clear()
        statement = select(Tenant.id).where(among("postgresql", Tenant.id, "ids"))
        async with sessions() as session:
            for n in (1, 2, 17, 30):
                assert len((await session.scalars(statement, {"ids": [tenant.id for tenant in tenants[:n]]})).all()) == n
        assert len(sent) == 4
        assert len(set(sent)) == 1
    finally:
        await engine.dispose()
