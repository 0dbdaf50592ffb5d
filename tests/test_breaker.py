"""Circuit breaker: one behavioural suite, run in-process (fake clock) and on real Redis (real time).

On Redis, ``peer`` is a second breaker on a second connection, standing in for another worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from delivery.breaker import Breaker, BreakerConfig, BreakerView, MemoryBreaker, RedisBreaker
from tests.support.clock import ManualClock, sleep_past

CONFIG = BreakerConfig(
    failure_threshold=3,
    failure_ratio=0.5,
    window_seconds=60,
    min_volume=10,
    cooldown=0.4,
    max_cooldown=1.0,
    probe_timeout=0.6,
    probe_wait=0.1,
)
RATIO_ONLY = BreakerConfig(failure_threshold=100, min_volume=10, failure_ratio=0.5, window_seconds=1, cooldown=0.2)
EP = "ep_1"
# Real time that passes on Redis between a transition and the assertion: a loaded CI box can stall
# for tens of ms, so the times above are long enough that a 0.1 s slack still tells them apart.
SLACK = 0.1


@dataclass
class _Env:
    breaker: Breaker
    peer: Breaker  # shares the breaker's state
    now: Callable[[], float]
    advance: Callable[[float], Awaitable[None]]

    async def open(self, endpoint_id: str = EP) -> None:
        for _ in range(CONFIG.failure_threshold):
            await self.breaker.record(endpoint_id, False)
        assert (await self.breaker.view(endpoint_id)).state == "open"

    async def probe(self) -> None:
        """Wait out the cool-down and take the probe."""
        await self.advance((await self.breaker.view(EP)).cooldown)
        assert await self.breaker.acquire(EP) is None


Make = Callable[[BreakerConfig], _Env]


@pytest.fixture
async def peer_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Make:
    if request.param == "memory":
        clock = ManualClock()

        def memory(config: BreakerConfig) -> _Env:
            breaker = MemoryBreaker(config, clock=clock)
            return _Env(breaker, breaker, clock, clock.advance)

        return memory
    client, peer = request.getfixturevalue("redis_client"), request.getfixturevalue("peer_client")

    def redis(config: BreakerConfig) -> _Env:
        return _Env(RedisBreaker(client, config), RedisBreaker(peer, config), time.time, sleep_past)

    return redis


@pytest.fixture
def env(make: Make) -> _Env:
    return make(CONFIG)


async def test_unknown_endpoint_is_closed(env: _Env) -> None:
    assert await env.breaker.view(EP) == BreakerView("closed", 0, None, CONFIG.cooldown)
    assert await env.breaker.acquire(EP) is None


async def test_opens_after_consecutive_failures(env: _Env) -> None:
    assert [await env.breaker.record(EP, False) for _ in range(3)] == [None, None, "opened"]
    view = await env.breaker.view(EP)
    assert (view.state, view.consecutive_failures, view.cooldown) == ("open", 3, CONFIG.cooldown)
    assert view.retry_at == pytest.approx(env.now() + CONFIG.cooldown, abs=SLACK)
    # results of requests sent before it opened change nothing
    assert await env.breaker.record(EP, False) is None
    assert await env.breaker.record(EP, True) is None
    assert await env.breaker.view(EP) == view


async def test_success_resets_the_consecutive_count(env: _Env) -> None:
    for success in (False, False, True, False, False):
        assert await env.breaker.record(EP, success) is None
    assert await env.breaker.view(EP) == BreakerView("closed", 2, None, CONFIG.cooldown)
    assert await env.breaker.record(EP, False) == "opened"


async def test_opened_is_reported_once_across_workers(env: _Env) -> None:
    breakers = (env.breaker, env.peer)
    results = await asyncio.gather(*(breakers[i % 2].record(EP, False) for i in range(20)))
    assert results.count("opened") == 1
    assert results.count(None) == 19


async def test_ratio_opens_only_at_min_volume(make: Make) -> None:
    env = make(RATIO_ONLY)
    assert [await env.breaker.record(EP, False) for _ in range(10)] == [None] * 9 + ["opened"]


async def test_ratio_opens_when_failures_reach_the_ratio(make: Make) -> None:
    env = make(RATIO_ONLY)
    for success in [True] * 6 + [False] * 4:
        assert await env.breaker.record(EP, success) is None  # 4 of 10
    assert await env.breaker.record(EP, False) is None  # 5 of 11
    assert await env.breaker.record(EP, False) == "opened"  # 6 of 12


async def test_results_leave_the_window(make: Make) -> None:
    env = make(RATIO_ONLY)
    for _ in range(9):
        await env.breaker.record(EP, False)
    await env.advance(RATIO_ONLY.window_seconds + RATIO_ONLY.bucket_seconds / 2)
    assert [await env.breaker.record(EP, False) for _ in range(10)] == [None] * 9 + ["opened"]


async def test_open_acquire_returns_the_probe_time(env: _Env) -> None:
    await env.open()
    retry_at = await env.peer.acquire(EP)
    assert retry_at is not None and retry_at > env.now()
    assert retry_at == pytest.approx((await env.breaker.view(EP)).retry_at, abs=1e-5)


async def test_exactly_one_probe_after_the_cooldown(env: _Env) -> None:
    await env.open()
    await env.advance(CONFIG.cooldown)
    before = env.now()
    breakers = (env.breaker, env.peer)
    results = await asyncio.gather(*(breakers[i % 2].acquire(EP) for i in range(20)))
    after = env.now()
    assert results.count(None) == 1
    waits = [r for r in results if r is not None]
    assert all(before < r <= after + CONFIG.probe_wait + 1e-5 for r in waits)
    view = await env.breaker.view(EP)
    assert view.state == "half_open"
    # The probe was taken between before and after (a collector pause can stretch that on Redis).
    assert view.retry_at is not None
    assert before + CONFIG.probe_timeout - 1e-3 <= view.retry_at <= after + CONFIG.probe_timeout + 1e-3


async def test_probe_success_closes(env: _Env) -> None:
    await env.open()
    await env.probe()
    assert await env.peer.record(EP, True) == "closed"
    assert await env.breaker.view(EP) == BreakerView("closed", 0, None, CONFIG.cooldown)
    assert await env.breaker.acquire(EP) is None
    # a fresh count: it takes the full threshold to open again
    assert [await env.breaker.record(EP, False) for _ in range(3)] == [None, None, "opened"]


async def test_probe_failure_reopens_with_doubled_cooldown_capped(env: _Env) -> None:
    await env.open()
    await env.probe()
    assert await env.breaker.record(EP, False) is None  # still open to the outside: no new event
    view = await env.breaker.view(EP)
    assert (view.state, view.consecutive_failures, view.cooldown) == ("open", 4, 2 * CONFIG.cooldown)
    assert view.retry_at == pytest.approx(env.now() + 2 * CONFIG.cooldown, abs=SLACK)
    assert await env.peer.acquire(EP) == pytest.approx(view.retry_at, abs=1e-5)

    await env.probe()
    assert await env.breaker.record(EP, False) is None
    assert (await env.breaker.view(EP)).cooldown == CONFIG.max_cooldown  # 1.6, capped

    await env.probe()
    assert await env.breaker.record(EP, True) == "closed"
    await env.open()
    assert (await env.breaker.view(EP)).cooldown == CONFIG.cooldown


async def test_a_circuit_says_since_when_it_is_open_until_it_closes(env: _Env) -> None:
    assert await env.peer.open_since(EP) is None
    await env.open()
    opened = env.now()
    assert await env.peer.open_since(EP) == pytest.approx(opened, abs=SLACK)
    await env.probe()
    assert await env.breaker.record(EP, False) is None  # a failed probe: open since the first time, still
    assert await env.peer.open_since(EP) == pytest.approx(opened, abs=SLACK)
    await env.probe()
    assert await env.breaker.record(EP, True) == "closed"
    assert await env.peer.open_since(EP) is None


async def test_unreported_probe_is_handed_out_again(env: _Env) -> None:
    await env.open()
    await env.probe()
    assert await env.peer.acquire(EP) is not None
    await env.advance(CONFIG.probe_timeout)
    assert await env.peer.acquire(EP) is None
    assert await env.breaker.acquire(EP) is not None
    assert (await env.breaker.view(EP)).retry_at == pytest.approx(env.now() + CONFIG.probe_timeout, abs=SLACK)


async def test_results_reported_together_keep_their_order(env: _Env) -> None:
    """Concurrent successes of an endpoint are counted together, but never past one of its
    failures: S F F S F F reaches no three failures in a row, in whatever batches it travels
    (counting both successes first would make it S S F F F F)."""
    results = await asyncio.gather(*(env.breaker.record(EP, ok) for ok in (True, False, False, True, False, False)))
    assert results == [None] * 6
    assert (await env.breaker.view(EP)).state == "closed"
    assert await env.breaker.record(EP, False) == "opened"


async def test_a_run_of_successes_closes_a_half_open_circuit_once(env: _Env) -> None:
    await env.open()
    await env.probe()
    results = await asyncio.gather(*(env.breaker.record(EP, True) for _ in range(5)))
    assert results.count("closed") == 1 and results.count(None) == 4
    assert (await env.breaker.view(EP)).state == "closed"


async def test_concurrent_successes_are_one_script_call_and_each_is_counted(private_redis_client: aioredis.Redis) -> None:
    """A busy endpoint's successes cost Redis one call per batch, not one each, and the window
    still holds every one: 41 successes keep 40 failures under the ratio, the 41st opens it."""
    config = BreakerConfig(failure_threshold=1000, failure_ratio=0.5, min_volume=10, window_seconds=60)
    breaker = RedisBreaker(private_redis_client, config)
    await breaker.record(EP, True)  # the script is loaded: the count below is of calls alone
    calls = (await private_redis_client.info("commandstats"))["cmdstat_evalsha"]["calls"]
    assert await asyncio.gather(*(breaker.record(EP, True) for _ in range(40))) == [None] * 40
    assert (await private_redis_client.info("commandstats"))["cmdstat_evalsha"]["calls"] - calls <= 2  # one batch (two, if the first left alone)
    for _ in range(40):
        assert await breaker.record(EP, False) is None
    assert await breaker.record(EP, False) == "opened"  # 41 of 82


async def test_reset_closes(env: _Env) -> None:
    await env.open()
    await env.peer.reset(EP)
    assert await env.breaker.view(EP) == BreakerView("closed", 0, None, CONFIG.cooldown)
    assert await env.breaker.acquire(EP) is None


async def test_circuits_not_closed_are_listed_until_they_close(env: _Env) -> None:
    assert await env.breaker.open_circuits(10) == []
    await env.open()
    await env.open("ep_b")
    await env.breaker.record("ep_c", False)  # failing, still closed
    assert sorted(await env.peer.open_circuits(10)) == [EP, "ep_b"]
    assert len(await env.peer.open_circuits(1)) == 1

    await env.probe()  # half-open, then open again
    assert sorted(await env.breaker.open_circuits(10)) == [EP, "ep_b"]
    assert await env.breaker.record(EP, False) is None
    assert sorted(await env.breaker.open_circuits(10)) == [EP, "ep_b"]

    await env.probe()
    assert await env.breaker.record(EP, True) == "closed"
    await env.peer.reset("ep_b")
    assert await env.breaker.open_circuits(10) == []


async def test_a_forgotten_circuit_leaves_the_list(redis_client: aioredis.Redis) -> None:
    """A breaker's hash that expired (a day idle) or that Redis lost is a closed circuit."""
    breaker = RedisBreaker(redis_client, CONFIG)
    for endpoint_id in ("ep_a", "ep_b"):
        for _ in range(CONFIG.failure_threshold):
            await breaker.record(endpoint_id, False)
    await redis_client.delete("hg:cb:ep_a")
    assert await breaker.open_circuits(10) == ["ep_b"]
    assert await redis_client.zrange("hg:cb:open", 0, -1) == [b"ep_b"]


async def test_a_circuit_open_before_the_list_existed_joins_it_at_its_next_failed_probe(redis_client: aioredis.Redis) -> None:
    """A circuit already open when this release came (no list entry) is listed once a probe fails."""
    breaker = RedisBreaker(redis_client, CONFIG)
    for _ in range(CONFIG.failure_threshold):
        await breaker.record(EP, False)
    await redis_client.zrem("hg:cb:open", EP)  # as an older release left it
    await sleep_past(CONFIG.cooldown)
    assert await breaker.acquire(EP) is None  # the probe
    assert await breaker.record(EP, False) is None
    assert await breaker.open_circuits(10) == [EP]


async def test_endpoints_are_independent(env: _Env) -> None:
    await env.open("ep_a")
    assert await env.breaker.acquire("ep_b") is None
    assert (await env.breaker.view("ep_b")).state == "closed"


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_ratio=0)
    with pytest.raises(ValueError):
        BreakerConfig(cooldown=10, max_cooldown=5)
    with pytest.raises(ValueError):
        BreakerConfig(closed_trust=-1)


async def test_a_worker_trusts_closed_for_a_moment_and_not_past_its_own_failure(
    redis_client: aioredis.Redis, peer_client: aioredis.Redis
) -> None:
    """While trusted, "closed" is answered here without Redis (which would say open): another worker's
    circuit reaches this one at its own first failure, or when the trust runs out."""
    clock = ManualClock()
    breaker, peer = RedisBreaker(redis_client, CONFIG, clock=clock), RedisBreaker(peer_client, CONFIG)
    assert await breaker.acquire(EP) is None  # Redis: closed
    for _ in range(CONFIG.failure_threshold):
        await peer.record(EP, False)
    assert (await breaker.view(EP)).state == "open"
    assert await breaker.acquire(EP) is None  # trusted: not asked
    await breaker.record(EP, False)  # failing here too
    assert await breaker.acquire(EP) is not None

    await peer.reset(EP)
    assert await breaker.acquire(EP) is None
    for _ in range(CONFIG.failure_threshold):
        await peer.record(EP, False)
    await clock.advance(CONFIG.closed_trust)
    assert await breaker.acquire(EP) is not None  # the trust ran out: asked, and open


async def test_no_trust_asks_before_every_attempt(redis_client: aioredis.Redis, peer_client: aioredis.Redis) -> None:
    config = BreakerConfig(failure_threshold=1, closed_trust=0)
    breaker, peer = RedisBreaker(redis_client, config), RedisBreaker(peer_client, config)
    assert await breaker.acquire(EP) is None
    await peer.record(EP, False)
    assert await breaker.acquire(EP) is not None


async def test_closed_is_not_trusted_when_a_failure_came_while_redis_was_asked(
    redis_client: aioredis.Redis, peer_client: aioredis.Redis
) -> None:
    breaker, peer = RedisBreaker(redis_client, CONFIG), RedisBreaker(peer_client, CONFIG)
    asking = asyncio.ensure_future(breaker.acquire(EP))  # Redis will say closed
    await asyncio.sleep(0)  # on its way
    await breaker.record(EP, False)  # meanwhile an attempt here fails
    assert await asking is None
    for _ in range(CONFIG.failure_threshold):
        await peer.record(EP, False)
    assert await breaker.acquire(EP) is not None  # asked again: open
