"""The test-service helpers against real servers: shared URLs, throwaway stop/restart, failure messages."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from tests.support import services
from tests.support.services import ThrowawayPostgres, ThrowawayRedis, create_database, drop_database, free_port

ROOT = Path(__file__).resolve().parents[1]


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


async def test_shared_postgres_answers_a_query() -> None:
    conn = await asyncpg.connect(_dsn(services.test_postgres_url()))
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()


async def test_shared_redis_answers_a_query() -> None:
    client = aioredis.from_url(services.test_redis_url())
    try:
        assert await client.ping()
        assert await client.echo("hookgate") == b"hookgate"
    finally:
        await client.aclose()


def test_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


@pytest.mark.parametrize(
    ("function", "env"),
    [("test_postgres_url", "HOOKGATE_TEST_DATABASE_URL"), ("test_redis_url", "HOOKGATE_TEST_REDIS_URL")],
)
def test_unreachable_configured_url_stops_the_run(monkeypatch: pytest.MonkeyPatch, function: str, env: str) -> None:
    scheme = "postgresql+asyncpg://postgres@" if env.endswith("DATABASE_URL") else "redis://"
    monkeypatch.setenv(env, f"{scheme}127.0.0.1:{free_port()}/0")
    with pytest.raises(pytest.exit.Exception, match=env):
        getattr(services, function).__wrapped__()  # bypass the session cache


@pytest.mark.parametrize(
    ("function", "default", "finder", "package"),
    [
        ("test_postgres_url", "_PG_DEFAULT", "pg_bindir", "postgresql"),
        ("test_redis_url", "_REDIS_DEFAULT", "_redis_server", "redis-server"),
    ],
)
def test_no_server_and_no_binaries_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, function: str, default: str, finder: str, package: str
) -> None:
    monkeypatch.delenv("HOOKGATE_TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("HOOKGATE_TEST_REDIS_URL", raising=False)
    scheme = "postgresql+asyncpg://postgres@" if package == "postgresql" else "redis://"
    monkeypatch.setattr(services, default, f"{scheme}127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(services, finder, lambda: None)
    with pytest.raises(pytest.exit.Exception) as failure:
        getattr(services, function).__wrapped__()
    message = str(failure.value)
    assert f"`{package}`" in message
    assert "HOOKGATE_TEST_DATABASE_URL" in message and "HOOKGATE_TEST_REDIS_URL" in message


@pytest.mark.slow
async def test_throwaway_postgres_stops_and_restarts() -> None:
    with ThrowawayPostgres() as pg:
        assert pg.url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/postgres"
        db_url = await create_database(pg.url, "hookgate_restart")
        assert db_url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/hookgate_restart"
        conn = await asyncpg.connect(_dsn(db_url))
        await conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        await conn.close()

        pg.stop()
        pg.stop()
        with pytest.raises(OSError):
            await asyncpg.connect(_dsn(db_url), timeout=2)

        pg.start()
        pg.start()
        survivor = await asyncpg.connect(_dsn(db_url))
        assert await survivor.fetchval("SELECT v FROM t") == 7

        await drop_database(pg.url, "hookgate_restart")  # despite the open connection
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.InterfaceError)):  # terminated, maybe already noticed
            await survivor.fetchval("SELECT 1")
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(_dsn(db_url))
        await drop_database(pg.url, "hookgate_restart")  # idempotent, for teardown after a failed create
    assert _port_closed(pg.port)


@pytest.mark.slow
async def test_throwaway_redis_stops_and_restarts() -> None:
    with ThrowawayRedis() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = aioredis.from_url(server.url)
        try:
            assert await client.ping()
            server.stop()
            with pytest.raises(redis.ConnectionError):
                await client.ping()
            server.start()
            assert await client.ping()
            assert await client.dbsize() == 0
        finally:
            await client.aclose()
    assert _port_closed(server.port)


@pytest.mark.slow
def test_fallback_throwaways_are_stopped_at_exit() -> None:
    """With nothing on the default ports the suite starts its own servers, and removes them at exit."""
    script = f"""
from tests.support import services
services._PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"
services._REDIS_DEFAULT = "redis://127.0.0.1:{free_port()}/0"
print(services.test_postgres_url(), services.test_redis_url())
"""
    tmpdir = tempfile.mkdtemp(prefix="hookgate-services-test-")
    os.chmod(tmpdir, 0o755)  # the postgres OS user must reach its data dir inside
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKGATE_TEST_")} | {"TMPDIR": tmpdir}
        argv = [sys.executable, "-c", script]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        pg_url, redis_url = done.stdout.split()
        assert pg_url.endswith("/postgres") and redis_url.startswith("redis://127.0.0.1:")
        assert _port_closed(urlsplit(pg_url).port) and _port_closed(urlsplit(redis_url).port)
        assert os.listdir(tmpdir) == []
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
