"""Time for suites that run one behaviour in-process on a fake clock and on Redis in real time."""

from __future__ import annotations

import asyncio


class ManualClock:
    """A clock that moves only when told to: the in-process variant's ``clock``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


async def sleep_past(seconds: float) -> None:
    """The Redis variant's ``advance``: really wait, a little longer, so that Redis ``TIME`` has
    moved on at least that far when the next call reaches it."""
    await asyncio.sleep(seconds + 0.02)
