"""GCRA rate limiting: in-process for embedded mode, one Lua round trip on Redis in production.

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next request. With
emission interval ``T = 1 / per_second`` and tolerance ``T * (burst - 1)``, exactly ``burst``
requests pass at once from idle, then one per ``T``. Both backends count in whole microseconds,
so that boundary is exact (float seconds drift by a few ulps per step and can refuse the last
request of a burst).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from gateway.batching import Batcher
from gateway.scripts import MAX_PIPELINE, Script

_MICROS = 1_000_000
# MemoryLimiter sweeps idle keys once the table reaches this size, then twice the live size.
_SWEEP_MIN = 1024


# The slowest rate there is: one per 11.6 days. Its interval in whole microseconds must exist (a
# rate of 1e-320/s had none, and its OverflowError failed every hit of the pipeline it was in).
MIN_PER_SECOND = 1e-6


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second >= MIN_PER_SECOND:
            raise ValueError(f"per_second must be >= {MIN_PER_SECOND}, got {self.per_second}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """A setting's ``per_second/burst``."""
        per_second, burst = text.split("/")
        return cls(float(per_second), int(burst))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until one would be allowed (0.0 when allowed)


_ALLOWED = Decision(allowed=True, retry_after=0.0)


def _decision(reply: list[int], rank: int) -> Decision:
    """The decision for the hit at ``rank`` among those one script call decided together."""
    allowed, wait = reply
    return _ALLOWED if rank < allowed else Decision(allowed=False, retry_after=wait / _MICROS)


@dataclass(frozen=True, slots=True)
class Tally:
    """Count a hit's outcome in a hash, in the same atomic step: ``field + ":admitted"|":refused"``."""

    key: str
    field: str
    ttl_seconds: int


class Limiter(Protocol):
    async def hit(self, key: str, rate: Rate, tally: Tally | None = None) -> Decision: ...

    async def tallies(self, key: str) -> dict[str, int]: ...


_Hit = tuple[str, Rate, Tally | None]  # a Redis key (prefixed), its rate, where to count the outcome


def _outcome(tally: Tally, allowed: bool) -> str:
    return f"{tally.field}:{'admitted' if allowed else 'refused'}"


def _gcra(rate: Rate) -> tuple[int, int]:
    """Emission interval and tolerance in microseconds (the interval rounded, at least 1)."""
    interval = max(1, round(_MICROS / rate.per_second))
    return interval, interval * (rate.burst - 1)


class MemoryLimiter:
    """One process's limiter. Hits never await, so each is atomic on the event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, int] = {}
        self._sweep_at = _SWEEP_MIN
        self._tallies: dict[str, tuple[float, dict[str, int]]] = {}  # key -> (expires at, counts)

    async def hit(self, key: str, rate: Rate, tally: Tally | None = None) -> Decision:
        interval, tolerance = _gcra(rate)
        now = round(self._clock() * _MICROS)
        tat = max(self._tat.get(key, now), now)
        if tat > now + tolerance + interval:  # left by a slower rate: see _HIT_LUA
            tat = self._tat[key] = now + tolerance + interval
        wait = tat - tolerance - now
        decision = Decision(allowed=False, retry_after=wait / _MICROS) if wait > 0 else _ALLOWED
        if decision.allowed:
            self._tat[key] = tat + interval
            if len(self._tat) >= self._sweep_at:
                self._sweep(now)
        if tally is not None:
            self._count(tally, decision.allowed)
        return decision

    async def tallies(self, key: str) -> dict[str, int]:
        expires, counts = self._tallies.get(key, (0.0, {}))
        return dict(counts) if expires > self._clock() else {}

    def _count(self, tally: Tally, allowed: bool) -> None:
        now = self._clock()
        entry = self._tallies.get(tally.key)
        if entry is None or entry[0] <= now:
            self._tallies = {k: v for k, v in self._tallies.items() if v[0] > now}  # a new key: drop the expired
            entry = self._tallies[tally.key] = (now + tally.ttl_seconds, {})
        counts = entry[1]
        field = _outcome(tally, allowed)
        counts[field] = counts.get(field, 0) + 1

    def _sweep(self, now: int) -> None:
        """Drop keys whose TAT is past (they mean the same as absent); amortised O(1) per hit."""
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._tat))


_HIT_LUA = """
-- GCRA on one key holding the TAT in microseconds of Redis time (one clock for every process).
-- ARGV[1]: emission interval (us), ARGV[2]: tolerance = interval * (burst - 1) (us), ARGV[3]: how
-- many hits arrive together (each decided as if the previous one had just been).
-- KEYS[2] (optional): a hash that counts the outcomes in fields ARGV[4] (allowed) and ARGV[5]
-- (refused), kept for ARGV[6] seconds.
-- Returns {allowed, wait}: the first `allowed` hits pass; the rest would pass in `wait` microseconds.
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local hits = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- absent or past TAT: the key is idle
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
-- A TAT beyond now + tolerance + interval was stored under a slower rate (the limit was raised
-- since): at this rate no TAT is ever further out, so the key is set to that, as if its burst had
-- just been spent, instead of owing the old rate's debt for minutes.
if tat > now + tolerance + interval then
  tat = now + tolerance + interval
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000))
end
local slack = now + tolerance - tat
local allowed = 0
if slack >= 0 then
  allowed = math.min(hits, math.floor(slack / interval) + 1)
  -- the float quotient may round up across a boundary: check the last hit exactly
  if tat + (allowed - 1) * interval - tolerance - now > 0 then
    allowed = allowed - 1
  end
end
if allowed > 0 then
  tat = tat + allowed * interval
  -- once the TAT is past, the key says nothing an absent one would not: expire it then
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000))
end
if KEYS[2] then
  if allowed > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[4], allowed)
  end
  if allowed < hits then
    redis.call('HINCRBY', KEYS[2], ARGV[5], hits - allowed)
  end
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
if allowed == hits then
  return {allowed, 0}
end
return {allowed, tat - tolerance - now}
"""


class RedisLimiter:
    """Limits shared by every gateway and worker process: one atomic script call per key and batch.

    Hits that arrive while a pipeline is on its way leave together in the next (``gateway.batching``),
    and the hits of one batch on the same key and rate are one script call that decides them in
    order (a burst at one tenant is one call, not one per event). Each call stays atomic.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "hg:rl:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = Script(redis, _HIT_LUA)  # batched here, grouped by key
        self._batcher: Batcher[_Hit, Decision | Exception] = Batcher(self._decide, max_items=MAX_PIPELINE, concurrency=1)

    async def hit(self, key: str, rate: Rate, tally: Tally | None = None) -> Decision:
        decision = await self._batcher.submit((self._prefix + key, rate, tally))
        if isinstance(decision, Exception):
            raise decision
        return decision

    async def tallies(self, key: str) -> dict[str, int]:
        counts = await self._redis.hgetall(self._prefix + key)
        return {field.decode(): int(value) for field, value in counts.items()}

    async def _decide(self, hits: list[_Hit]) -> list[Decision | Exception]:
        """One script call per distinct hit, for as many as came; its callers in order of arrival."""
        together: dict[_Hit, list[int]] = {}
        for position, hit in enumerate(hits):
            together.setdefault(hit, []).append(position)
        replies = await self._script.run_many([self._call(hit, len(positions)) for hit, positions in together.items()])
        decisions: list[Decision | Exception] = [_ALLOWED] * len(hits)
        for positions, reply in zip(together.values(), replies, strict=True):
            for rank, position in enumerate(positions):
                decisions[position] = reply if isinstance(reply, Exception) else _decision(reply, rank)
        return decisions

    def _call(self, hit: _Hit, count: int) -> tuple[list[str], list[Any]]:
        key, rate, tally = hit
        keys, args = [key], [*_gcra(rate), count]
        if tally is not None:
            keys.append(self._prefix + tally.key)
            args += [_outcome(tally, True), _outcome(tally, False), tally.ttl_seconds]
        return keys, args
