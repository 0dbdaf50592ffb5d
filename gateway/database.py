"""Database wiring shared by every package: the declarative base, column types and engines.

The same models and migrations serve Postgres (asyncpg) and SQLite (aiosqlite, embedded mode).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, DateTime, MetaData, Select, Table, any_, bindparam, event, false, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.base import PGCompiler, PGDialect
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# What a call to the database raises when it is down, slow or refuses the connection.
STORAGE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite drops the offset; naive means UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: datetime) -> datetime:
    """Aware UTC (naive means UTC). A time whose offset takes it past year 1 or 9999 in UTC
    (``0001-01-01T00:00:00+14:00``) is that end of time: as a filter's bound it means the same,
    and it is a client's input, which must not be a 500."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()


# JSON columns through msgspec: the stdlib's encoder was ~1 % of ingest's CPU (each event's headers).
_COMMON: dict[str, Any] = {"hide_parameters": True, "json_serializer": _json_text, "json_deserializer": msgspec.json.decode}


def create_engine(
    url: str, *, pool_size: int = 10, pre_ping: bool = True, generic_plans: bool = False, command_timeout: float | None = None
) -> AsyncEngine:
    """An engine tuned per backend: pooled asyncpg, or SQLite in WAL mode with a busy timeout.

    Statement parameters (event bodies, encrypted secrets) are kept out of error messages and logs.
    ``pre_ping=False`` saves a round trip per checkout, for a caller that retries a statement once
    when its connection turns out to be dead (``exc.connection_invalidated``). ``generic_plans``:
    Postgres plans each prepared statement once per connection instead of on every execution
    (``plan_cache_mode``), for hot statements whose plan the parameters do not change.
    ``command_timeout``: seconds a Postgres statement may take before it fails with TimeoutError (a
    connection lost to a partition never answers, and nothing else would end the wait).
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 5}, **_COMMON)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        event.listen(engine.sync_engine, "before_execute", _write_lock_for_select_for_update)
        return engine
    # Connecting has the same bound: a partitioned server takes the SYN and never answers (asyncpg waits 60 s).
    connect_args: dict[str, Any] = {"command_timeout": command_timeout, **({"timeout": command_timeout} if command_timeout else {})}
    if generic_plans:
        connect_args["server_settings"] = {"plan_cache_mode": "force_generic_plan"}
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping, pool_timeout=5, connect_args=connect_args,
        **_COMMON,
    )
    if command_timeout:
        event.listen(engine.sync_engine, "handle_error", _drop_on_timeout)
    return engine


def _drop_on_timeout(context: ExceptionContext) -> None:
    """A statement past its time limit leaves its connection in an unknown state (after a partition
    it never answers again): treated as a disconnect, so the pool drops it and the connections
    opened beside it instead of handing them out again, each to time out in turn."""
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True


def _write_lock_for_select_for_update(connection, statement, *_args) -> None:  # type: ignore[no-untyped-def]
    """SQLite has no row locks and drops ``FOR UPDATE``; a no-op write takes its database write lock
    instead, so a read-then-write (cancel a job, rotate a secret) cannot interleave with another
    writer's commit, as the row lock guarantees on Postgres.

    Not for ``SKIP LOCKED``: those are the background loops' claims, one task each in the single
    embedded process, and they must not hold the write lock while they only look (the replay
    runner, which must exclude a concurrent cancel, writes first itself)."""
    lock = statement._for_update_arg if isinstance(statement, Select) else None
    if lock is None or lock.skip_locked:
        return
    table = next(table for table in statement.get_final_froms() if isinstance(table, Table))
    key = next(iter(table.primary_key.columns))
    connection.execute(update(table).where(false()).values({key.name: key}))


def dialect_insert(dialect_name: str):  # type: ignore[no-untyped-def]
    """The dialect's ``insert``, which has ``on_conflict_do_nothing`` (both backends support it)."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


def among(dialect_name: str, column: Any, key: str) -> ColumnElement[bool]:
    """``column IN :key``: one SQL text whatever the number of values bound to ``key`` (a list).

    On Postgres an IN list renders a new statement for each length, and asyncpg prepares every new
    text (a round trip and a plan) once its cache of 100 per connection turns over, which the live
    path's varying batch sizes do: ``= ANY(:key)`` is prepared once per connection. SQLite has no
    arrays; its IN list expands at execution. With the values left to the execution, a hot
    statement is built once (building one cost more CPU than running it, docs/PERFORMANCE.md).
    """
    if dialect_name == "postgresql":
        return column == any_(bindparam(key, type_=postgresql.ARRAY(column.type)))
    return column.in_(bindparam(key, expanding=True))  # type: ignore[no-any-return]


def postgres_sql(statement: Any) -> str:
    """A Core statement as Postgres SQL to splice into a statement written as text: its constants
    inline, its other parameters named and cast to their types (``CAST(:name AS type)``). Hot
    statements are text because a text statement's cache key is its string, where a Core
    statement's is rebuilt on every execution."""
    return str(statement.compile(dialect=_TextDialect(paramstyle="named")))


class _TextCompiler(PGCompiler):
    def visit_bindparam(self, bindparam: Any, **kw: Any) -> str:
        if bindparam.value is not None:  # a constant of the statement, not a parameter of its execution
            return str(self.render_literal_bindparam(bindparam, **kw))
        # Typed where it stands: Postgres cannot tell the type of a parameter in a select list or a CASE.
        return f"CAST({super().visit_bindparam(bindparam, **kw)} AS {self.dialect.type_compiler_instance.process(bindparam.type)})"


class _TextDialect(PGDialect):
    """The plain Postgres dialect (no driver's casts on the parameters) that renders constants inline."""

    statement_compiler = _TextCompiler


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
