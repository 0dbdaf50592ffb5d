"""``among``: the rows of ``column IN :values``, as one SQL text on Postgres whatever the number of
values (so asyncpg prepares it once per connection rather than once per length), from a statement
built once; engines that ask for generic plans; Core rendered into statements written as text."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import String, Uuid, any_, bindparam, event, literal, select, text
from sqlalchemy.dialects import postgresql

from gateway.database import UTCDateTime, among, create_engine, postgres_sql, session_factory
from tenants.models import Tenant
from tests.support.proxy import PartitionProxy


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


@pytest.mark.parametrize("backend", ["postgres"])
async def test_generic_plans_are_asked_for_per_engine(database_url: str) -> None:
    """The pass's pool plans each prepared statement once (``generic_plans``); other pools keep
    Postgres's own choice between a plan per execution and a generic one."""
    for generic, expected in ((True, "force_generic_plan"), (False, "auto")):
        engine = create_engine(database_url, pool_size=1, generic_plans=generic)
        try:
            async with engine.connect() as connection:
                assert await connection.scalar(text("SHOW plan_cache_mode")) == expected
        finally:
            await engine.dispose()


async def test_postgres_sql_inlines_constants_and_casts_parameters() -> None:
    """Core rendered for a statement written as text: constants as SQL literals (a text statement
    would drop their values), parameters named and cast (Postgres cannot type a bare parameter in a
    select list or a CASE)."""
    statement = select(literal("it's", String()).label("name"), bindparam("when", type_=UTCDateTime()).label("at")).where(
        Tenant.id == any_(bindparam("ids", type_=postgresql.ARRAY(Uuid())))
    )
    sql = postgres_sql(statement)
    assert "'it''s' AS name" in sql
    assert "CAST(:when AS TIMESTAMP WITH TIME ZONE) AS at" in sql
    assert "= ANY (CAST(:ids AS UUID[]))" in sql


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_statement_past_its_time_limit_fails_and_its_connection_is_not_pooled_again(database_url: str) -> None:
    """A connection open during a partition never answers again. Once the network is back, the pool
    must hand out a working connection, not that one. (Here asyncpg gives the frozen one up by
    itself; in CI once it did not, and the worker's claims timed out pass after pass on it: that
    case, which ``_drop_on_timeout`` covers, only the partition fault scenario has shown.)"""
    port = urlsplit(database_url).port
    async with PartitionProxy(port) as proxy:
        engine = create_engine(database_url.replace(f":{port}/", f":{proxy.port}/"), pool_size=1, pre_ping=False, command_timeout=0.5)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")  # as the worker's passes and the group commit run
        try:
            async with autocommit.connect() as connection:
                assert await connection.scalar(text("SELECT 1")) == 1
                proxy.partition()
                with pytest.raises(TimeoutError):
                    await connection.execute(text("SELECT 1"))
            proxy.heal()  # new connections pass again (asyncpg's cancel request too); the one open during the partition never will
            await asyncio.sleep(0.5)
            async with autocommit.connect() as connection:
                assert await connection.scalar(text("SELECT 1")) == 1
        finally:
            await engine.dispose()
