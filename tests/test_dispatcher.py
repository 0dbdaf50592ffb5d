"""The dispatch loop after the database dropped the worker's connections, on the real stack.

The worker's pools do not ping a connection before using it, so the first transaction after a
database restart fails. When that is a rung event's fan-out, the event must go out on the next
pass, not wait for the sweeper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from gateway.database import create_engine
from tests.conftest import new_source, new_tenant
from tests.support.receiver import Script, Server, wait_until


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite has no server connection to lose
async def test_a_rung_event_whose_fan_out_met_a_dead_connection_goes_out_on_the_next_pass(
    stack_factory: Callable[..., Any], database_url: str
) -> None:
    stack = await stack_factory(sweeper_interval_seconds=60)  # the sweeper would take a minute
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    async with Server(Script()) as receiver:
        await stack.endpoint(tenant, receiver.url)
        await stack.ingest(source)
        await wait_until(lambda: len(receiver.requests) == 1, timeout=10, what="the first delivery")
        killer = create_engine(database_url, pool_size=1)
        try:
            async with killer.connect() as connection:
                killed = await connection.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
        finally:
            await killer.dispose()
        assert killed  # the worker's pooled connections among them
        await stack.ingest(source)
        await wait_until(lambda: len(receiver.requests) == 2, timeout=10, what="the delivery after the dead connection")
