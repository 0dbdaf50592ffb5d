"""Readiness: can this process reach what it needs (the database; Redis in production)?"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

_TIMEOUT = 2.0


async def readiness(sessions: async_sessionmaker[AsyncSession], redis: aioredis.Redis | None) -> dict[str, str]:
    """``{"database": "ok" | "unreachable", "redis": …}``; Redis only when the process uses it."""
    checks = {"database": await _probe(_database(sessions))}
    if redis is not None:
        checks["redis"] = await _probe(redis.ping())
    return checks


def ready(checks: dict[str, str], needs: tuple[str, ...] | None = None) -> bool:
    """Whether every check in ``needs`` (default: all of them) is ok."""
    return all(state == "ok" for name, state in checks.items() if needs is None or name in needs)


async def _database(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        await session.execute(text("SELECT 1"))


async def _probe(check: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(check, _TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the reason is in the server's own logs
        return "unreachable"
    return "ok"
