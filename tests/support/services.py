"""Where the test suite finds Postgres and Redis, and throwaway servers it can start, stop and restart.

The shared servers come from HOOKGATE_TEST_DATABASE_URL / HOOKGATE_TEST_REDIS_URL, else the local
defaults; when the defaults do not answer but the server binaries are installed, a throwaway instance
is started once per session. Fault tests use their own ThrowawayPostgres / ThrowawayRedis so that
stopping a server never disturbs the shared one.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Self
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

_PG_ENV = "HOOKGATE_TEST_DATABASE_URL"
_REDIS_ENV = "HOOKGATE_TEST_REDIS_URL"
_PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
_REDIS_DEFAULT = "redis://127.0.0.1:6379/0"
_PROBE_TIMEOUT = 2.0
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0
_INITDB_TIMEOUT = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it, so parallel runs rarely collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@lru_cache(maxsize=1)
def test_postgres_url() -> str:
    """Admin URL (postgresql+asyncpg) of a server the suite may create databases on."""
    return _shared_url(_PG_ENV, _PG_DEFAULT, _postgres_problem, ThrowawayPostgres)


@lru_cache(maxsize=1)
def test_redis_url() -> str:
    """URL of a Redis the suite may flush."""
    return _shared_url(_REDIS_ENV, _REDIS_DEFAULT, _redis_problem, ThrowawayRedis)


# The names start with "test_": keep pytest from collecting them in modules that import them.
test_postgres_url.__test__ = False  # type: ignore[attr-defined]
test_redis_url.__test__ = False  # type: ignore[attr-defined]


async def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE on the admin URL's server; returns the same URL pointing at the new database."""
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {_ident(name)}")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + quote(name, safe="")))


@asynccontextmanager
async def fresh_services(prefix: str, redis_db: int) -> AsyncIterator[tuple[str, str]]:
    """A new migrated Postgres database and an emptied Redis database, for real server processes;
    both dropped or emptied afterwards. Yields their URLs."""
    from gateway.migrate import upgrade_async  # the schema is the project's, not this module's concern

    admin, name = test_postgres_url(), f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name)
    redis_url = test_redis_url().rsplit("/", 1)[0] + f"/{redis_db}"
    client = aioredis.from_url(redis_url)
    try:
        await upgrade_async(url)
        await client.flushdb()
        yield url, redis_url
    finally:
        await client.flushdb()
        await client.aclose()
        await drop_database(admin, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop the database even while a leaked pool or a crashed test still holds connections to it."""
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        if conn.get_server_version().major >= 13:
            await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
            return
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)}")
    finally:
        await conn.close()


class _Throwaway:
    """A server in its own temp dir on a fixed port: stop() keeps the data so start() can bring it back."""

    _name: ClassVar[str]
    _stop_signal: ClassVar[signal.Signals]
    url: str
    port: int

    def __init__(self) -> None:
        self.port = free_port()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cleanup()

    def _log(self, workdir: Path) -> Path:
        return workdir / f"{self._name}.log"

    def start(self) -> None:
        """Start (or restart) the server and return once it answers; a no-op while it is running."""
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._dir is None:
            workdir = Path(tempfile.mkdtemp(prefix=f"hookgate-{self._name}-"))
            try:
                self._prepare(workdir)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            self._dir = workdir
            atexit.register(self._cleanup)
        workdir = self._dir
        with self._log(workdir).open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv(workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                **self._popen_user(),
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while (problem := self._problem()) is not None:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                message = f"throwaway {self._name} on port {self.port} did not come up ({problem})"
                raise RuntimeError(f"{message}\n{_tail(self._log(workdir))}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Shut the server down and wait until it is gone, so the test observes a real outage."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self._stop_signal)
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_TIMEOUT)

    def _cleanup(self) -> None:
        self.stop()
        atexit.unregister(self._cleanup)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _prepare(self, workdir: Path) -> None:
        """One-time setup of the temp dir before the first start."""

    def _argv(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _problem(self) -> str | None:
        """Why the server does not answer yet, or None once it does."""
        raise NotImplementedError

    def _popen_user(self) -> dict[str, Any]:
        return {}


class ThrowawayPostgres(_Throwaway):
    """A private Postgres cluster (trust auth, 127.0.0.1 only, fsync off) for tests that take it down."""

    _name = "postgres"
    _stop_signal = signal.SIGINT  # the postmaster's "fast" shutdown, what pg_ctl -m fast sends

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            hint = _install_hint("postgresql")
            raise RuntimeError(f"no initdb/postgres binaries on PATH or in /usr/lib/postgresql/*/bin; {hint}")
        super().__init__()
        self._bindir = bindir
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _prepare(self, workdir: Path) -> None:
        if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to the postgres OS user
            account = pwd.getpwnam("postgres")
            os.chown(workdir, account.pw_uid, account.pw_gid)
        argv = [str(self._bindir / "initdb"), "-D", str(workdir / "data"), "-U", "postgres", "--auth=trust"]
        argv += ["-E", "UTF8", "--no-locale", "--no-sync"]
        with self._log(workdir).open("ab") as log:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                timeout=_INITDB_TIMEOUT,
                **self._popen_user(),
            )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed with exit code {result.returncode}\n{_tail(self._log(workdir))}")

    def _argv(self, workdir: Path) -> list[str]:
        settings = ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        argv = [str(self._bindir / "postgres"), "-D", str(workdir / "data"), "-p", str(self.port), "-k", str(workdir)]
        for setting in settings:
            argv += ["-c", setting]
        return argv

    def _problem(self) -> str | None:
        return _postgres_problem(self.url)

    def _popen_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        account = pwd.getpwnam("postgres")
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


class ThrowawayRedis(_Throwaway):
    """A private redis-server without persistence, for tests that restart Redis."""

    _name = "redis"
    _stop_signal = signal.SIGTERM  # with no save points configured this exits at once, writing nothing

    def __init__(self) -> None:
        server = _redis_server()
        if server is None:
            raise RuntimeError(f"no redis-server on PATH; {_install_hint('redis-server')}")
        super().__init__()
        self._server = server
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _argv(self, workdir: Path) -> list[str]:
        argv = [self._server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        return argv + ["--save", "", "--appendonly", "no"]

    def _problem(self) -> str | None:
        return _redis_problem(self.url)


def _shared_url(env: str, default: str, problem_of: Callable[[str], str | None], throwaway: type[_Throwaway]) -> str:
    """The configured or default server if it answers, else a session-wide throwaway, else stop the run."""
    configured = os.environ.get(env)
    url = configured or default
    problem = problem_of(url)
    if problem is None:
        return url
    if configured:
        _give_up(f"{env}={configured} does not answer ({problem}); fix or unset it.")
    try:
        server = throwaway()  # raises, with an install hint, when the binaries are missing
        server.start()  # stopped by its atexit hook
    except RuntimeError as exc:
        _give_up(f"nothing answers at {default} ({problem}), and no throwaway server either: {exc}")
    return server.url


def _give_up(message: str) -> NoReturn:
    """Stop the whole run at once: every test would fail the same way, slowly."""
    pytest.exit(f"test services unavailable: {message}", returncode=pytest.ExitCode.USAGE_ERROR)


def _install_hint(package: str) -> str:
    return (
        f"Point {_PG_ENV} / {_REDIS_ENV} at reachable servers, run them locally on the default ports, "
        f"or install the Debian package `{package}` (apt-get install postgresql redis-server) "
        "so the suite can start its own."
    )


def _postgres_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.hostname and (problem := _tcp_problem(parts.hostname, parts.port or 5432)):
        return problem

    async def probe() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=_PROBE_TIMEOUT)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        _run_sync(probe())
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _redis_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.hostname and (problem := _tcp_problem(parts.hostname, parts.port or 6379)):
        return problem
    client = redis.Redis.from_url(url, socket_timeout=_PROBE_TIMEOUT, socket_connect_timeout=_PROBE_TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _tcp_problem(host: str, port: int) -> str | None:
    """Cheap first check: a closed port fails here without a driver, a thread or an event loop."""
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT).close()
    except OSError as exc:
        return f"{host}:{port}: {exc}"
    return None


def _run_sync(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine from sync code, even when called inside the session's running event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


def pg_bindir() -> Path | None:
    """A directory with initdb and postgres of one version: the one on PATH, else the newest Debian install."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    installed = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(installed, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)], reverse=True)
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "postgres").is_file()), None)


def _redis_server() -> str | None:
    return shutil.which("redis-server")


def _asyncpg_dsn(url: str) -> str:
    """asyncpg wants postgresql://; the suite passes SQLAlchemy-style postgresql+asyncpg:// URLs."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tail(path: Path, limit: int = 4000) -> str:
    """The end of a server log, for start-up errors that would otherwise say only "timed out"."""
    try:
        text = path.read_bytes()[-limit:].decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return f"--- last lines of {path} ---\n{text}"
