"""Every fault scenario gets its own throwaway Postgres and Redis servers (tests/conftest.py),
and a deployment (gateway + workers) it may kill, stop and restart without touching shared servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.migrate import upgrade_async
from tests.conftest import OPERATOR_KEY, SECRET_KEY
from tests.faults.harness import FAST_ENV, Deployment, Receiver
from tests.support.services import ThrowawayPostgres, ThrowawayRedis, create_database, free_port


@pytest.fixture
async def deployment(throwaway_postgres: ThrowawayPostgres, throwaway_redis: ThrowawayRedis, tmp_path: Path) -> AsyncIterator[Deployment]:
    url = await create_database(throwaway_postgres.url, f"faults_{uuid.uuid4().hex[:10]}")
    await upgrade_async(url)
    port = free_port()
    env = {
        **FAST_ENV,
        "HOOKGATE_DATABASE_URL": url,
        "HOOKGATE_REDIS_URL": throwaway_redis.url,
        "HOOKGATE_SECRET_KEY": SECRET_KEY,
        "HOOKGATE_OPERATOR_KEY": OPERATOR_KEY,
        "HOOKGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PORT": str(port),
    }
    deployment = Deployment(env, tmp_path)
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as receiver:
        yield receiver
