"""Ingest admission: per-tenant, per-priority GCRA limits, with outcomes counted per window.

Each priority has its own budget (its own GCRA key), so a flood of low-priority events never
spends what critical ones need. The limit and the usage count are one atomic step (one Redis
round trip in production). When the limiter is unreachable, critical and high events are
admitted anyway (a lost payment event costs more than a missed limit), and so are events from a
provider that would not send them again (GitHub); normal and low ones are answered 503 so the
provider retries; both cases are counted.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway import metrics
from gateway.events.priority import PRIORITIES, Priority
from gateway.limiter import Limiter, Rate, Tally
from gateway.problems import Problem

_log = logging.getLogger("hookgate.admission")
_FAIL_OPEN: frozenset[str] = frozenset({"critical", "high"})
_LIMITER_ERRORS = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class WindowCounts:
    start: float  # unix seconds
    admitted: dict[str, int]
    refused: dict[str, int]


class Admission:
    def __init__(self, limiter: Limiter, *, window_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._limiter = limiter
        self._window = window_seconds
        self._clock = clock

    async def admit(self, tenant_id: uuid.UUID, priority: Priority, rate: Rate, *, redelivered: bool = True) -> None:
        """Return when the event may be stored; raise 429 (over the limit) or 503 (limiter down).
        ``redelivered``: the sender sends a refused event again by itself."""
        tally = Tally(self._usage_key(tenant_id, self._window_index()), priority, ttl_seconds=3 * self._window)
        try:
            decision = await self._limiter.hit(f"adm:{tenant_id}:{priority}", rate, tally)
        except _LIMITER_ERRORS:
            self._limiter_down(tenant_id, priority, fail_open=priority in _FAIL_OPEN or not redelivered)
            return
        if decision.allowed:
            metrics.labelled(metrics.ADMISSION, priority, "admitted").inc()
            return
        metrics.labelled(metrics.ADMISSION, priority, "refused").inc()
        retry_after = max(1, math.ceil(decision.retry_after))
        raise Problem(
            429,
            "rate-limited",
            f"this tenant's limit for {priority} events is {rate.per_second:g}/s with a burst of {rate.burst}; "
            f"retry after {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            priority=priority,
            limit={"rate_per_second": rate.per_second, "burst": rate.burst},
            retry_after=retry_after,
        )

    async def usage(self, tenant_id: uuid.UUID) -> tuple[WindowCounts, WindowCounts]:
        """Counts of the current and the previous window."""
        current = self._window_index()
        return await self._counts(tenant_id, current), await self._counts(tenant_id, current - 1)

    @property
    def window_seconds(self) -> int:
        return self._window

    def _limiter_down(self, tenant_id: uuid.UUID, priority: Priority, *, fail_open: bool) -> None:
        if fail_open:
            metrics.labelled(metrics.ADMISSION, priority, "failed_open").inc()
            _log.warning("limiter unreachable: %s event admitted without a limit", priority, extra={"tenant_id": str(tenant_id)})
            return
        metrics.labelled(metrics.ADMISSION, priority, "failed_closed").inc()
        raise Problem(
            503,
            "limiter-unavailable",
            f"{priority} events cannot be admitted while the rate limiter is unavailable; retry later",
            headers={"Retry-After": "5"},
            priority=priority,
        )

    async def _counts(self, tenant_id: uuid.UUID, index: int) -> WindowCounts:
        counts = await self._limiter.tallies(self._usage_key(tenant_id, index))
        return WindowCounts(
            start=index * self._window,
            admitted=_per_priority(counts, "admitted"),
            refused=_per_priority(counts, "refused"),
        )

    def _window_index(self) -> int:
        return int(self._clock() // self._window)

    def _usage_key(self, tenant_id: uuid.UUID, index: int) -> str:
        return f"usage:{tenant_id}:{self._window}:{index}"


def _per_priority(counts: Mapping[str, int], outcome: str) -> dict[str, int]:
    return {priority: counts.get(f"{priority}:{outcome}", 0) for priority in PRIORITIES}
