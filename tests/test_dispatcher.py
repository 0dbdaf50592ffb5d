"""The dispatch loop's own bookkeeping, with the database side replaced by a recording engine."""

from __future__ import annotations

import uuid
from typing import Any

from delivery.dispatcher import Dispatcher
from delivery.engine import Claimed
from tests.support.receiver import wait_until


class _FlakyEngine:
    """Fails the first fan-out (a dead connection, a restarting database), then records each."""

    def __init__(self) -> None:
        self.failures_left = 1
        self.fanned_out: list[uuid.UUID] = []

    async def fan_out(self, event_ids: list[uuid.UUID]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("connection lost")
        self.fanned_out += event_ids

    async def claim(self, _limit: int) -> Claimed:
        return Claimed([], [])

    async def fan_out_pending(self, _grace: float) -> int:
        return 0

    async def refresh_gauges(self) -> None:
        return None


async def test_rung_events_whose_fan_out_failed_are_fanned_out_on_a_later_pass() -> None:
    """Not left to the sweeper (its grace is long): a pass that fails keeps the rung ids for the next."""
    engine: Any = _FlakyEngine()
    dispatcher = Dispatcher(engine, concurrency=4, poll_interval=0.05, sweep_interval=3600, sweep_grace=3600)
    dispatcher.start()
    try:
        rung = [uuid.uuid4(), uuid.uuid4()]
        await dispatcher.ring(rung)
        await wait_until(lambda: len(engine.fanned_out) == 2, timeout=5, what="the fan-out after the failed pass")
        assert sorted(engine.fanned_out) == sorted(rung) and engine.failures_left == 0
    finally:
        await dispatcher.stop()
