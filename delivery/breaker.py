"""Per-endpoint circuit breakers: in-process for embedded mode, atomic Lua on Redis in production.

closed -> open after ``failure_threshold`` consecutive failures, or once the window holds
``min_volume`` results of which at least ``failure_ratio`` failed. open -> half_open when the
cool-down is over and a caller acquires: that caller alone sends (the probe). Probe success ->
closed (window, count and cool-down reset); probe failure -> open, cool-down doubled up to
``max_cooldown``. A probe not reported within ``probe_timeout`` is handed to the next caller.

A Redis breaker's worker trusts a "closed" answer for ``closed_trust`` seconds and sends without
asking again, until its own next failure: a healthy endpoint costs no round trip per attempt. So
a circuit another worker opened is seen here within that time, or at this worker's first failure
against it, whichever comes first (requests already in flight when it opens are sent anyway).

``record`` returns "opened" or "closed" only on the transitions a tenant sees (closed -> open,
half_open -> closed), so the events alternate and each is emitted once across all workers; a
failed probe keeps the circuit open and returns None. Results recorded while open come from
requests sent before it opened and are ignored; in half_open the first result reported decides
(``record`` does not know which caller held the probe).

Every breaker not closed is also listed (``open_circuits``) so that the gauges find open circuits
without looking at every endpoint.

The failure window is ``_BUCKETS`` buckets of ``window_seconds / _BUCKETS`` each, so it spans
the last 90-100 % of ``window_seconds`` with constant state per endpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, runtime_checkable

import redis.asyncio as aioredis

from gateway.batching import Batcher
from gateway.scripts import MAX_PIPELINE, PipelinedScript, Script

State = Literal["closed", "open", "half_open"]
Transition = Literal["opened", "closed"]

_BUCKETS = 10
# A Redis breaker nobody touched for this long forgets itself (deleted endpoints leave nothing).
_IDLE_TTL = 86_400
_MAX_TRUSTED = 10_000  # trusted endpoints kept per worker before the expired ones are dropped
# A failure is remembered this long against answers asked for before it: far longer than an
# acquire can wait (the Redis client's socket timeout is 2 s).
_FAILURE_MEMORY = 60.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    failure_ratio: float = 0.5
    window_seconds: int = 60
    min_volume: int = 20
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    probe_timeout: float = 60.0
    # While a probe is out, other callers come back this soon (or at probe_timeout if earlier),
    # so the backlog starts draining shortly after a successful probe.
    probe_wait: float = 5.0
    closed_trust: float = 1.0  # seconds a worker acts on Redis's "closed" without asking again (0: never)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.min_volume < 1 or self.window_seconds < 1:
            raise ValueError("failure_threshold, min_volume and window_seconds must be >= 1")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if not 0 < self.cooldown <= self.max_cooldown:
            raise ValueError("need 0 < cooldown <= max_cooldown")
        if not (self.probe_timeout > 0 and self.probe_wait > 0):
            raise ValueError("probe_timeout and probe_wait must be > 0")
        if self.closed_trust < 0:
            raise ValueError("closed_trust must be >= 0")

    @property
    def bucket_seconds(self) -> float:
        return self.window_seconds / _BUCKETS


@dataclass(frozen=True, slots=True)
class BreakerView:
    state: State
    consecutive_failures: int
    # open: unix time the next probe may go; half_open: when an unreported probe is handed out again
    retry_at: float | None
    cooldown: float


@runtime_checkable
class Breaker(Protocol):
    async def acquire(self, endpoint_id: str) -> float | None:
        """None: send now. Otherwise the unix time to try again (without spending an attempt)."""
        ...

    async def record(self, endpoint_id: str, success: bool) -> Transition | None:
        """Count one delivery result; the transition it caused, for the caller to announce."""
        ...

    async def view(self, endpoint_id: str) -> BreakerView: ...

    async def open_circuits(self, limit: int) -> list[str]:
        """Up to ``limit`` endpoints whose breaker is open or half-open."""
        ...

    async def open_since(self, endpoint_id: str) -> float | None:
        """Unix time the endpoint's circuit last left closed; None while it is closed."""
        ...

    async def reset(self, endpoint_id: str) -> None: ...


@dataclass(slots=True)
class _Circuit:
    cooldown: float
    state: State = "closed"
    consecutive: int = 0
    retry_at: float | None = None
    buckets: dict[int, list[int]] = field(default_factory=dict)  # index -> [results, failures]
    opened_at: float | None = None


class MemoryBreaker:
    """One process's breakers. No method awaits, so each transition is atomic on the event loop."""

    def __init__(self, config: BreakerConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    async def acquire(self, endpoint_id: str) -> float | None:
        circuit = self._circuits.get(endpoint_id)
        if circuit is None or circuit.retry_at is None:  # closed
            return None
        now = self._clock()
        if now < circuit.retry_at:
            if circuit.state == "half_open":
                return min(circuit.retry_at, now + self._config.probe_wait)
            return circuit.retry_at
        circuit.state, circuit.retry_at = "half_open", now + self._config.probe_timeout
        return None

    async def record(self, endpoint_id: str, success: bool) -> Transition | None:
        config = self._config
        circuit = self._circuits.setdefault(endpoint_id, _Circuit(config.cooldown))
        now = self._clock()
        if circuit.state == "open":
            return None
        if circuit.state == "half_open":
            if success:
                del self._circuits[endpoint_id]
                return "closed"
            circuit.consecutive += 1
            circuit.cooldown = min(circuit.cooldown * 2, config.max_cooldown)
            circuit.state, circuit.retry_at = "open", now + circuit.cooldown
            return None

        circuit.consecutive = 0 if success else circuit.consecutive + 1
        current = math.floor(now / config.bucket_seconds)
        bucket = circuit.buckets.setdefault(current, [0, 0])
        bucket[0] += 1
        bucket[1] += not success
        for index in [i for i in circuit.buckets if i <= current - _BUCKETS]:
            del circuit.buckets[index]
        results = sum(b[0] for b in circuit.buckets.values())
        failures = sum(b[1] for b in circuit.buckets.values())
        if circuit.consecutive >= config.failure_threshold or (
            results >= config.min_volume and failures / results >= config.failure_ratio
        ):
            self._circuits[endpoint_id] = _Circuit(
                config.cooldown, "open", circuit.consecutive, now + config.cooldown, opened_at=now
            )
            return "opened"
        return None

    async def view(self, endpoint_id: str) -> BreakerView:
        circuit = self._circuits.get(endpoint_id) or _Circuit(self._config.cooldown)
        return BreakerView(circuit.state, circuit.consecutive, circuit.retry_at, circuit.cooldown)

    async def open_circuits(self, limit: int) -> list[str]:
        return [endpoint_id for endpoint_id, circuit in self._circuits.items() if circuit.state != "closed"][:limit]

    async def open_since(self, endpoint_id: str) -> float | None:
        circuit = self._circuits.get(endpoint_id)
        return circuit.opened_at if circuit is not None else None

    async def reset(self, endpoint_id: str) -> None:
        self._circuits.pop(endpoint_id, None)


# One hash per endpoint. Fields: state ('open' | 'half_open'; absent = closed), consecutive,
# cooldown, retry_at (unix seconds), and per window bucket i: 'n:<i>' results, 'f:<i>' failures.
# An absent hash is a closed breaker with no history. A sorted set lists the endpoints whose
# breaker is not closed, scored by when they opened: the record script adds and removes them. Times come from Redis TIME, so every
# process shares one clock; times are returned as strings because Lua numbers become integers.

_ACQUIRE_LUA = """
-- ARGV: probe_timeout, probe_wait, ttl. Returns 'closed' or nil (the probe) to send now, else the
-- time to try again.
local key = KEYS[1]
local state = redis.call('HGET', key, 'state')
if not state then
  return 'closed'
end
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local retry_at = tonumber(redis.call('HGET', key, 'retry_at'))
if now < retry_at then
  if state == 'half_open' then
    -- the probe is out: look again soon, it may come back good
    retry_at = math.min(retry_at, now + tonumber(ARGV[2]))
  end
  return string.format('%.6f', retry_at)
end
-- cool-down over, or the last probe never reported: this caller is the probe
redis.call('HSET', key, 'state', 'half_open', 'retry_at', now + tonumber(ARGV[1]))
redis.call('EXPIRE', key, ARGV[3])
return false
"""

_RECORD_LUA = """
-- KEYS: the endpoint's hash, the set of open circuits.
-- ARGV: successes (how many, in a row; 0: one failure), failure_threshold, failure_ratio,
--       min_volume, bucket_seconds, buckets, cooldown, max_cooldown, ttl, endpoint id.
-- Returns 'opened', 'closed' or nil.
local key = KEYS[1]
local successes = tonumber(ARGV[1])
local success = successes > 0
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HGET', key, 'state')

if state == 'open' then
  -- sent before it opened: only a probe decides
  return false
end

if state == 'half_open' then
  if success then
    redis.call('DEL', key)  -- closed: fresh window and count, first cool-down again
    redis.call('ZREM', KEYS[2], ARGV[10])
    if successes > 1 then  -- the rest of the run counts in the fresh window
      redis.call('HSET', key, 'consecutive', 0, 'n:' .. math.floor(now / tonumber(ARGV[5])), successes - 1)
      redis.call('EXPIRE', key, ARGV[9])
    end
    return 'closed'
  end
  local cooldown = math.min(tonumber(redis.call('HGET', key, 'cooldown')) * 2, tonumber(ARGV[8]))
  redis.call('HINCRBY', key, 'consecutive', 1)
  redis.call('HSET', key, 'state', 'open', 'cooldown', cooldown, 'retry_at', now + cooldown)
  redis.call('EXPIRE', key, ARGV[9])
  redis.call('ZADD', KEYS[2], 'NX', now, ARGV[10])  -- listed already, unless it opened before the list existed
  return false  -- it never closed, so there is nothing new to announce
end

-- closed: count the result
local consecutive = 0
if success then
  redis.call('HSET', key, 'consecutive', 0)
else
  consecutive = redis.call('HINCRBY', key, 'consecutive', 1)
end
local current = math.floor(now / tonumber(ARGV[5]))
redis.call('HINCRBY', key, 'n:' .. current, math.max(successes, 1))
if not success then
  redis.call('HINCRBY', key, 'f:' .. current, 1)
end

-- sum the window, dropping buckets that slid out of it
local oldest = current - tonumber(ARGV[6]) + 1
local results, failures = 0, 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local kind, index = string.match(fields[i], '^([nf]):(%d+)$')
  if kind then
    if tonumber(index) < oldest then
      redis.call('HDEL', key, fields[i])
    elseif kind == 'n' then
      results = results + tonumber(fields[i + 1])
    else
      failures = failures + tonumber(fields[i + 1])
    end
  end
end

if consecutive >= tonumber(ARGV[2])
    or (results >= tonumber(ARGV[4]) and failures / results >= tonumber(ARGV[3])) then
  -- open with a fresh window: once it closes again, old failures do not count
  local cooldown = tonumber(ARGV[7])
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'open', 'consecutive', consecutive,
             'cooldown', cooldown, 'retry_at', now + cooldown)
  redis.call('EXPIRE', key, ARGV[9])
  redis.call('ZADD', KEYS[2], now, ARGV[10])
  return 'opened'
end
redis.call('EXPIRE', key, ARGV[9])
return false
"""


_OPEN_CIRCUITS_LUA = """
-- KEYS: the set of open circuits. ARGV: the hashes' prefix, how many to return.
-- Those whose hash is gone (forgotten after a day idle, or Redis lost it) are closed: dropped.
local open = {}
for _, endpoint in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HEXISTS', ARGV[1] .. endpoint, 'state') == 1 then
    if #open < tonumber(ARGV[2]) then
      table.insert(open, endpoint)
    end
  else
    redis.call('ZREM', KEYS[1], endpoint)
  end
end
return open
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBreaker:
    """Breakers shared by every worker: each acquire and record is one atomic script call.

    Calls that arrive while others are on their way share one pipelined round trip
    (``gateway.scripts``), as a worker's many concurrent attempts do.
    """

    def __init__(
        self, redis: aioredis.Redis, config: BreakerConfig, prefix: str = "hg:cb:", *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._trusted: dict[str, float] = {}  # endpoint -> until when "closed" holds here without asking
        self._failed_at: dict[str, float] = {}  # endpoint -> its last failure here (an answer may predate it)
        self._config = config
        self._prefix = prefix
        # never expire an open breaker before its probe is due
        self._ttl = math.ceil(max(_IDLE_TTL, config.window_seconds, config.max_cooldown + config.probe_timeout))
        self._acquire = PipelinedScript(redis, _ACQUIRE_LUA)
        self._record = Script(redis, _RECORD_LUA)
        self._open_key = prefix + "open"
        self._open_circuits = Script(redis, _OPEN_CIRCUITS_LUA)
        self._results: Batcher[tuple[str, bool], Any] = Batcher(self._record_many, max_items=MAX_PIPELINE, concurrency=1)
        # The record script's arguments after the first (the result): the same for every call.
        self._record_config = (config.failure_threshold, config.failure_ratio, config.min_volume, config.bucket_seconds,
                               _BUCKETS, config.cooldown, config.max_cooldown, self._ttl)

    async def acquire(self, endpoint_id: str) -> float | None:
        config = self._config
        if self._trusted.get(endpoint_id, 0.0) > self._clock():
            return None
        asked = self._clock()
        reply = await self._acquire([self._prefix + endpoint_id], [config.probe_timeout, config.probe_wait, self._ttl])
        if reply is None:  # this caller holds the probe
            return None
        if (answer := _text(reply)) == "closed":
            if self._failed_at.get(endpoint_id, -math.inf) < asked:  # no failure here since Redis was asked
                self._trust(endpoint_id)
            return None
        return float(answer)

    def _trust(self, endpoint_id: str) -> None:
        if not self._config.closed_trust:
            return
        now = self._clock()
        if len(self._trusted) >= _MAX_TRUSTED:  # endpoints this worker no longer sends to
            self._trusted = {endpoint: until for endpoint, until in self._trusted.items() if until > now}
            forget = now - _FAILURE_MEMORY
            self._failed_at = {endpoint: at for endpoint, at in self._failed_at.items() if at > forget}
        self._trusted[endpoint_id] = now + self._config.closed_trust

    async def record(self, endpoint_id: str, success: bool) -> Transition | None:
        if not success:  # failing here: ask Redis before every attempt again
            self._trusted.pop(endpoint_id, None)
            self._failed_at[endpoint_id] = self._clock()
        transition = await self._results.submit((endpoint_id, success))
        if isinstance(transition, Exception):
            raise transition
        return None if transition is None else cast(Transition, _text(transition))

    async def _record_many(self, results: list[tuple[str, bool]]) -> list[Any]:
        """The results that arrived together, in one pipeline: a run of successes of one endpoint
        (no failure of it between them) is one script call that counts them all, at the place of
        the first, so each endpoint's results still reach Redis in the order they came. The run's
        reply (a transition: only ``closed``, from half-open) goes to its first caller; an error
        to every caller in it."""
        calls: list[tuple[list[str], list[Any]]] = []
        callers: list[list[int]] = []  # per call, the results it carries
        runs: dict[str, int] = {}  # endpoint -> its call counting the current run of successes
        for i, (endpoint_id, success) in enumerate(results):
            if not success:
                runs.pop(endpoint_id, None)  # a failure ends the endpoint's run
            elif (run := runs.get(endpoint_id)) is not None:
                calls[run][1][0] += 1
                callers[run].append(i)
                continue
            else:
                runs[endpoint_id] = len(calls)
            calls.append(([self._prefix + endpoint_id, self._open_key], [int(success), *self._record_config, endpoint_id]))
            callers.append([i])
        answers: list[Any] = [None] * len(results)
        for reply, members in zip(await self._record.run_many(calls), callers, strict=True):
            for member in members if isinstance(reply, Exception) else members[:1]:
                answers[member] = reply
        return answers

    async def view(self, endpoint_id: str) -> BreakerView:
        state, consecutive, retry_at, cooldown = await self._redis.hmget(
            self._prefix + endpoint_id, "state", "consecutive", "retry_at", "cooldown"
        )
        return BreakerView(
            state=cast(State, _text(state)) if state else "closed",
            consecutive_failures=int(consecutive or 0),
            retry_at=float(retry_at) if retry_at else None,
            cooldown=float(cooldown) if cooldown else self._config.cooldown,
        )

    async def open_circuits(self, limit: int) -> list[str]:
        [reply] = await self._open_circuits.run_many([([self._open_key], [self._prefix, limit])])
        if isinstance(reply, Exception):
            raise reply
        return [_text(endpoint) for endpoint in reply]

    async def open_since(self, endpoint_id: str) -> float | None:
        opened = await self._redis.zscore(self._open_key, endpoint_id)  # scored when it opened (Redis TIME)
        return float(opened) if opened is not None else None

    async def reset(self, endpoint_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.delete(self._prefix + endpoint_id).zrem(self._open_key, endpoint_id).execute()
