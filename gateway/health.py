"""Readiness: can this process reach what it needs (the database, migrated at least as far as this
code; Redis in production)? A database one migration ahead is ready: during a rollout the new
release's migration runs first (a pre-upgrade hook), and the old pods keep serving on it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable

import redis.asyncio as aioredis
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.migrate import alembic_config

_TIMEOUT = 2.0
NOT_MIGRATED = "not migrated"
_UNDEFINED_TABLE = "42P01"  # Postgres's SQLSTATE


async def readiness(sessions: async_sessionmaker[AsyncSession], redis: aioredis.Redis | None) -> dict[str, str]:
    """``{"database": "ok" | "not migrated" | "unreachable", "redis": …}``; Redis only when the
    process uses it."""
    checks = {"database": await _probe(_database(sessions))}
    if redis is not None:
        checks["redis"] = await _probe(redis.ping())
    return checks


def ready(checks: dict[str, str], needs: tuple[str, ...] | None = None) -> bool:
    """Whether every check in ``needs`` (default: all of them) is ok."""
    return all(state == "ok" for name, state in checks.items() if needs is None or name in needs)


async def _database(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions() as session:
        try:
            revision = await session.scalar(text("SELECT version_num FROM alembic_version"))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_TABLE or "no such table" in str(exc.orig):
                return NOT_MIGRATED  # an empty database
            raise
    return NOT_MIGRATED if revision is None or revision in _older_revisions() else "ok"


@functools.cache
def _older_revisions() -> frozenset[str]:
    """This code's migrations before its head: a database at one of them is behind the code."""
    scripts = ScriptDirectory.from_config(alembic_config(""))
    return frozenset(script.revision for script in scripts.walk_revisions()) - set(scripts.get_heads())


async def _probe(check: Awaitable[object]) -> str:
    try:
        answer = await asyncio.wait_for(check, _TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the reason is in the server's own logs
        return "unreachable"
    return answer if isinstance(answer, str) else "ok"
