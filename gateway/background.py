"""Background loops (the dispatcher, the replay runner, the anomaly monitor) that stop between
passes, not in the middle of one.

Cancelling a pass mid-statement is harmless on Postgres (the server rolls back when the connection
goes), but on SQLite the closed connection lingers as a zombie that keeps the database's write lock
until the garbage collector finalises its last statement: every other writer in the process waits
on it (the test suite's next app did, for 30 s, whenever a shutdown caught the anomaly monitor
inside its scoring transaction). So a stop asks the loop to finish its pass, wakes it if it is
waiting, and cancels it only when the grace runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

# How long a stop waits for the pass in progress: a pass is a few statements; one that takes longer
# (a database that stopped answering) is cancelled, as every stop used to be.
PASS_GRACE_SECONDS = 5.0


class BackgroundLoop:
    def __init__(self, body: Callable[[], Coroutine[Any, Any, None]], *, name: str, wake: Callable[[], None] | None = None) -> None:
        self._body = body
        self._name = name
        self._wake = wake  # what the loop waits on between passes, besides ``pause``
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._body(), name=self._name)

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for: the body returns at the end of its pass."""
        return self._stop.is_set()

    async def pause(self, seconds: float) -> None:
        """Sleep between passes; a stop ends the sleep at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def stop(self, grace: float = PASS_GRACE_SECONDS) -> None:
        """Let the current pass finish (at most ``grace`` seconds), then end the loop."""
        if self._task is None:
            return
        self._stop.set()
        if self._wake is not None:
            self._wake()
        _, late = await asyncio.wait({self._task}, timeout=grace)
        if late:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
