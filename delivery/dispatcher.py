"""The dispatch loop: claim due deliveries up to a concurrency cap, attempt each, and sweep.

It runs inside every worker process (and inside the app in embedded mode). A doorbell ring wakes
it at once; otherwise it polls the database every ``poll_interval``, so due retries, expired
leases and events that were stored but never fanned out are found even when Redis is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from delivery.claim import Claimed
from delivery.engine import DeliveryEngine
from delivery.jobs import Job
from gateway.background import BackgroundLoop
from gateway.metrics import SWEEPER

# A doorbell fans out within milliseconds (a ring in process in embedded mode, through Redis in
# production); the sweeper waits this long before it treats an event as stranded, so the two rarely
# race (if they do, fan-out is idempotent) and a fresh event is not counted as a recovery.
SWEEP_GRACE_SECONDS = 2.0
_log = logging.getLogger("hookgate.dispatcher")
_CLAIM_GAP = 0.02  # seconds between passes that only freed capacity started


class Dispatcher:
    def __init__(
        self,
        engine: DeliveryEngine,
        *,
        concurrency: int,
        poll_interval: float,
        sweep_interval: float,
        sweep_grace: float,
    ) -> None:
        self._engine = engine
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._sweep_interval = sweep_interval
        self._sweep_grace = sweep_grace
        self.wakeup = asyncio.Event()  # new work: a ring
        self._freed = asyncio.Event()  # an attempt finished: capacity is free again
        self._rung: set[uuid.UUID] = set()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop = BackgroundLoop(self._run, name="hookgate-dispatcher", wake=self.wakeup.set)
        self._last_sweep = 0.0

    def start(self) -> None:
        self._loop.start()

    async def ring(self, event_ids: list[uuid.UUID]) -> None:
        """The doorbell: fan these events out on the next pass, which starts now."""
        self._rung.update(event_ids)
        self.wakeup.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming after the current pass; let in-flight attempts finish for ``grace`` seconds
        (their leases cover the rest)."""
        await self._loop.stop()
        if self._in_flight:
            _done, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self) -> None:
        while not self._loop.stopping:
            started = time.monotonic()
            self.wakeup.clear()
            self._freed.clear()
            rung, self._rung = list(self._rung), set()
            try:
                await self._sweep_if_due()
                free = self._concurrency - len(self._in_flight)
                claimed = await self._engine.claim(free, rung)
            except Exception:  # noqa: BLE001 - the database may be down; keep polling until it is back
                _log.warning("dispatcher pass failed; retrying", exc_info=True)
                self._rung.update(rung)  # not fanned out: the next pass tries them again
                claimed, free = Claimed([], [], more=True), -1
            for job in claimed.jobs:
                self._spawn(job)
            if free > 0 and len(claimed.ids) == free:
                continue  # a full batch: more may be due right now
            await self._idle(started, claimed.more)

    async def _idle(self, pass_started: float, backlogged: bool) -> None:
        """Wait for a ring (go at once), the poll interval, or, while ``backlogged``, freed capacity.

        Freed capacity starts a pass at most every ``_CLAIM_GAP``: a busy worker then claims in
        batches rather than once per finished attempt, which would cost a query each. When the
        last claim took every due row, a finished attempt is no reason to look again: new work
        comes with a ring, and retries falling due with the poll.
        """
        ring = asyncio.ensure_future(self.wakeup.wait())
        waits = (ring, asyncio.ensure_future(self._freed.wait())) if backlogged else (ring,)
        try:
            done, _ = await asyncio.wait(waits, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED)
            gap = pass_started + _CLAIM_GAP - time.monotonic()
            if done and ring not in done and gap > 0:
                await asyncio.wait((ring,), timeout=gap)
        finally:
            for wait in waits:
                wait.cancel()

    async def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= self._sweep_interval:
            self._last_sweep = now
            recovered = await self._engine.fan_out_pending(self._sweep_grace)
            await self._engine.refresh_gauges()
            if recovered:
                SWEEPER.labels(kind="stranded_events").inc(recovered)
                _log.info("sweeper fanned out stranded events", extra={"events": recovered})

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._attempt(job))
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._freed.set()

    async def _attempt(self, job: Job) -> None:
        try:
            await self._engine.attempt(job)
        except Exception:  # noqa: BLE001 - never crash the loop; the lease expires and the row is retried
            _log.exception("delivery attempt failed unexpectedly", extra={"delivery_id": str(job.delivery_id)})
