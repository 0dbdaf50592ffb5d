"""The doorbell: after a commit, tell the delivery side that there is work. Only a hint.

Losing a ring delays work until the sweeper's next pass; it never loses it, because the
database row is the truth. Ringing therefore never raises into the caller.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Protocol

_log = logging.getLogger("hookgate.doorbell")


class Doorbell(Protocol):
    async def ring(self, event_ids: list[uuid.UUID]) -> None: ...


class LocalDoorbell:
    """Embedded mode: wakes the in-process dispatcher."""

    def __init__(self) -> None:
        self.wakeup = asyncio.Event()

    async def ring(self, event_ids: list[uuid.UUID]) -> None:
        self.wakeup.set()


async def ring_safely(doorbell: Doorbell, event_ids: list[uuid.UUID]) -> None:
    try:
        await doorbell.ring(event_ids)
    except Exception:  # noqa: BLE001 - a lost ring only delays: the sweeper finds the rows
        _log.warning("doorbell failed; the sweeper will pick the work up", exc_info=True)
