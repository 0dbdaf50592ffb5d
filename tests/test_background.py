"""Background loops stop between passes: a pass in progress finishes (its transaction commits and
leaves no lock behind), a wait between passes ends at once, and only a pass that outlives the
grace is cancelled."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sqlalchemy import text

from gateway.background import BackgroundLoop
from gateway.database import create_engine


async def test_a_stop_lets_the_pass_in_progress_finish_and_ends_the_pause_after_it() -> None:
    events: list[str] = []
    inside = asyncio.Event()

    async def body() -> None:
        while not loop.stopping:
            inside.set()
            await asyncio.sleep(0.2)  # a statement in flight
            events.append("pass done")
            await loop.pause(3600)
        events.append("returned")

    loop = BackgroundLoop(body, name="test-loop")
    loop.start()
    await inside.wait()
    await loop.stop(grace=60)
    assert events == ["pass done", "returned"]  # not cancelled mid-pass, nor in the pause


async def test_a_stop_wakes_a_loop_waiting_on_its_own_event() -> None:
    wakeup, returned = asyncio.Event(), asyncio.Event()

    async def body() -> None:
        while not loop.stopping:
            await wakeup.wait()
            wakeup.clear()
        returned.set()

    loop = BackgroundLoop(body, name="test-loop", wake=wakeup.set)
    loop.start()
    await asyncio.sleep(0)
    await loop.stop(grace=60)
    assert returned.is_set()


async def test_a_pass_that_outlives_the_grace_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def body() -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = BackgroundLoop(body, name="test-loop")
    loop.start()
    await asyncio.sleep(0)
    await loop.stop(grace=0.05)
    assert cancelled.is_set()


async def test_a_sqlite_transaction_in_progress_commits_and_frees_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "loop.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE marks (n INTEGER)")
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    inside = asyncio.Event()

    async def body() -> None:
        while not loop.stopping:
            async with engine.begin() as connection:  # holds SQLite's write lock until it commits
                await connection.execute(text("INSERT INTO marks VALUES (1)"))
                inside.set()
                await asyncio.sleep(0.2)
                await connection.execute(text("INSERT INTO marks VALUES (2)"))
            await loop.pause(3600)

    loop = BackgroundLoop(body, name="test-loop")
    loop.start()
    try:
        await inside.wait()
        await loop.stop(grace=60)
    finally:
        await engine.dispose()
    other = sqlite3.connect(path, timeout=0, isolation_level=None)  # no waiting: a held lock fails at once
    try:
        other.execute("BEGIN IMMEDIATE")
        assert other.execute("SELECT n FROM marks ORDER BY n").fetchall() == [(1,), (2,)]
        other.execute("ROLLBACK")
    finally:
        other.close()
