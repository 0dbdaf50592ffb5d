"""GCRA limiter: the same behaviour in-process (fake clock) and on real Redis (real time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.limiter import Limiter, MemoryLimiter, Rate, RedisLimiter, Tally
from gateway.scripts import PipelinedScript
from tests.support.clock import ManualClock, sleep_past
from tests.support.services import ThrowawayRedis

RATE = Rate(per_second=5, burst=3)  # one every 0.2 s: slow enough that test overhead does not count
INTERVAL = 1 / RATE.per_second


@dataclass
class _Env:
    limiter: Limiter
    advance: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def env(request: pytest.FixtureRequest) -> _Env:
    if request.param == "memory":
        clock = ManualClock()
        return _Env(MemoryLimiter(clock=clock), clock.advance)
    return _Env(RedisLimiter(request.getfixturevalue("redis_client")), sleep_past)


async def _hits(env: _Env, key: str, n: int) -> list[bool]:
    return [(await env.limiter.hit(key, RATE)).allowed for _ in range(n)]


async def test_burst_passes_then_refuses_with_retry_after(env: _Env) -> None:
    decisions = [await env.limiter.hit("k", RATE) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.retry_after for d in decisions[:3]] == [0.0, 0.0, 0.0]
    assert decisions[3].retry_after == pytest.approx(INTERVAL, abs=0.05)
    # a refused hit costs nothing: asking again does not push the wait out
    again = await env.limiter.hit("k", RATE)
    assert not again.allowed and 0 < again.retry_after <= decisions[3].retry_after


async def test_refills_at_the_rate(env: _Env) -> None:
    await _hits(env, "k", 3)
    refused = await env.limiter.hit("k", RATE)
    await env.advance(refused.retry_after)
    assert await _hits(env, "k", 2) == [True, False]
    await env.advance(INTERVAL)
    assert await _hits(env, "k", 2) == [True, False]
    await env.advance(RATE.burst * INTERVAL)  # idle long enough: the whole burst is back
    assert await _hits(env, "k", 4) == [True, True, True, False]


async def test_keys_are_independent(env: _Env) -> None:
    assert await _hits(env, "a", 4) == [True, True, True, False]
    assert await _hits(env, "b", 4) == [True, True, True, False]


async def test_a_raised_limit_applies_at_once(env: _Env) -> None:
    """The debt a slow rate left (its TAT far ahead) is not owed at the new, faster rate: the key
    waits at most one of the new intervals, as if its new burst had just been spent."""
    slow, fast = Rate(per_second=0.01, burst=50), Rate(per_second=1000, burst=500)
    assert [(await env.limiter.hit("k", slow)).allowed for _ in range(51)] == [True] * 50 + [False]  # owes ~100 s
    raised = await env.limiter.hit("k", fast)
    assert raised.allowed or raised.retry_after <= 1 / fast.per_second + 0.01
    await env.advance(0.05)
    assert (await env.limiter.hit("k", fast)).allowed


def test_rate_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Rate(per_second=0, burst=1)
    with pytest.raises(ValueError):
        Rate(per_second=1, burst=0)
    with pytest.raises(ValueError):  # no interval in microseconds: its OverflowError once failed a whole pipeline
        Rate(per_second=1e-320, burst=1)


async def test_memory_limiter_forgets_idle_keys() -> None:
    clock = ManualClock()
    limiter = MemoryLimiter(clock=clock)
    rate = Rate(per_second=1, burst=1)
    for i in range(3000):
        await limiter.hit(f"old{i}", rate)
    await clock.advance(2)
    for i in range(3000):
        await limiter.hit(f"new{i}", rate)
    assert set(limiter._tat) == {f"new{i}" for i in range(3000)}


async def test_redis_key_lives_for_the_burst_window(redis_client: aioredis.Redis) -> None:
    limiter = RedisLimiter(redis_client)
    for _ in range(RATE.burst):
        await limiter.hit("k", RATE)
    assert RATE.burst * INTERVAL * 1000 - 50 < await redis_client.pttl("hg:rl:k") <= RATE.burst * INTERVAL * 1000


async def test_redis_limiters_share_one_budget(redis_client: aioredis.Redis, redis_url: str) -> None:
    other = aioredis.from_url(redis_url)
    try:
        limiters = [RedisLimiter(redis_client), RedisLimiter(other)]
        rate = Rate(per_second=50, burst=10)
        allowed = 0
        start = time.monotonic()
        for round_ in range(5):
            if round_:
                await asyncio.sleep(0.05)  # 2.5 intervals: at least 2 more come back each round
            decisions = await asyncio.gather(*(limiters[i % 2].hit("shared", rate) for i in range(100)))
            allowed += sum(d.allowed for d in decisions)
        elapsed = time.monotonic() - start
    finally:
        await other.aclose()
    assert rate.burst + 4 * 2 <= allowed <= rate.burst + rate.per_second * elapsed


async def test_concurrent_redis_hits_on_one_key_are_one_script_call_and_each_is_counted(throwaway_redis: ThrowawayRedis) -> None:
    """A burst at one key is decided by one script call per batch, in order, each hit counted once;
    no pipeline asks SCRIPT EXISTS first. On a private server (it counts pool checkouts, so it
    makes its own client there): nobody else's calls are counted."""
    pool = _CountingPool.from_url(throwaway_redis.url)
    client = aioredis.Redis(connection_pool=pool)
    try:
        limiter = RedisLimiter(client)
        await limiter.hit("warm", RATE)  # loads the script (NOSCRIPT on a fresh Redis)
        calls_before, checks_before, pipelines_before = await _script_calls(client), await _script_checks(client), pool.checkouts
        decisions = await asyncio.gather(*(limiter.hit("k", RATE, Tally("usage", "low", 60)) for _ in range(200)))
        pipelines = pool.checkouts - pipelines_before
        assert [d.allowed for d in decisions] == [True] * RATE.burst + [False] * (200 - RATE.burst)  # first come, first served
        assert {round(d.retry_after, 1) for d in decisions[RATE.burst :]} == {INTERVAL}
        assert await limiter.tallies("usage") == {"low:admitted": RATE.burst, "low:refused": 200 - RATE.burst}
        assert await _script_calls(client) - calls_before <= 2  # the batch's script call, and at most a straggler's
        assert await _script_checks(client) == checks_before
        assert pipelines <= 2
    finally:
        await client.aclose()


async def test_hits_decided_together_match_the_same_hits_one_at_a_time(redis_client: aioredis.Redis) -> None:
    """Several keys, rates and tallies in one batch: each key grants exactly its burst, the refused
    wait what a lone refused hit would, and every outcome is counted under its own tally."""
    limiter = RedisLimiter(redis_client)
    slow, fast = Rate(per_second=2, burst=4), Rate(per_second=50, burst=7)
    hits = [("a", slow, Tally("ua", "high", 60)), ("a", slow, Tally("ua", "low", 60)), ("b", fast, None), ("a", slow, None)] * 10
    decisions = await asyncio.gather(*(limiter.hit(*hit) for hit in hits))
    by_key: dict[str, list[float]] = {"a": [], "b": []}
    for (key, _, _), decision in zip(hits, decisions, strict=True):
        by_key[key].append(decision.retry_after if not decision.allowed else 0.0)
    assert sum(wait == 0.0 for wait in by_key["a"]) == slow.burst
    assert sum(wait == 0.0 for wait in by_key["b"]) == fast.burst
    assert all(wait == pytest.approx(1 / slow.per_second, abs=0.05) for wait in by_key["a"] if wait)
    assert all(wait == pytest.approx(1 / fast.per_second, abs=0.01) for wait in by_key["b"] if wait)
    # groups are decided in the order of their first hit: "a" counted as high took the burst first
    assert await limiter.tallies("ua") == {"high:admitted": slow.burst, "high:refused": 10 - slow.burst, "low:refused": 10}
    later = await limiter.hit("a", slow)
    assert not later.allowed and 0 < later.retry_after <= 1 / slow.per_second


async def test_flushed_scripts_are_loaded_again_and_no_hit_runs_twice(redis_client: aioredis.Redis) -> None:
    """After Redis forgets its scripts (restart, SCRIPT FLUSH) the refused calls are sent once more."""
    limiter = RedisLimiter(redis_client)
    await limiter.hit("warm", RATE)
    await redis_client.script_flush()
    decisions = await asyncio.gather(*(limiter.hit("k", RATE, Tally("usage", "low", 60)) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == RATE.burst
    assert await limiter.tallies("usage") == {"low:admitted": RATE.burst, "low:refused": 50 - RATE.burst}


async def test_a_script_error_reaches_only_its_own_caller(redis_client: aioredis.Redis) -> None:
    script = PipelinedScript(redis_client, "if ARGV[1] == 'bad' then return redis.error_reply('refused: bad') end return ARGV[1]")
    replies = await asyncio.gather(*(script([], [arg]) for arg in ("a", "bad", "b")), return_exceptions=True)
    assert replies[0] == b"a" and replies[2] == b"b"
    assert isinstance(replies[1], ResponseError) and "refused: bad" in str(replies[1])


class _CountingPool(aioredis.ConnectionPool):
    """Counts connection checkouts: one per command sent alone or per pipeline."""

    checkouts = 0

    async def get_connection(self, *args: object, **kwargs: object) -> Any:
        self.checkouts += 1
        return await super().get_connection(*args, **kwargs)


async def _script_calls(redis_client: aioredis.Redis) -> int:
    return int((await redis_client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


async def _script_checks(redis_client: aioredis.Redis) -> int:
    return int((await redis_client.info("commandstats")).get("cmdstat_script|exists", {}).get("calls", 0))
