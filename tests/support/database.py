"""A short-lived connection to a test's database, for checks and setup behind the app's back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.database import create_engine


@contextlib.asynccontextmanager
async def connect(database_url: str, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
    """A connection of its own engine (disposed after); ``write`` wraps it in a committed transaction."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() if write else engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()
