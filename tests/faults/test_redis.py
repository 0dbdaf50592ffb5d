"""Redis loses everything mid-run: ``FLUSHALL`` twice, then a stop and a restart (no persistence).

The database is the truth and the queue only a doorbell: the dispatcher finds the stranded
events and due deliveries, and the worker's arq side comes back by itself (no ``NOGROUP`` stall).
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.faults.harness import Deployment, Ledger, Receiver, Traffic
from tests.support.services import ThrowawayRedis

pytestmark = pytest.mark.slow


async def test_flushall_mid_run_loses_nothing(deployment: Deployment, receiver: Receiver, throwaway_redis: ThrowawayRedis) -> None:
    await deployment.start(receiver)
    ledger = Ledger("Redis FLUSHALL (twice, mid-run)")
    traffic = asyncio.create_task(Traffic(ledger, deployment).send(300, per_second=50))
    client = aioredis.from_url(throwaway_redis.url)
    try:
        for _ in range(2):
            await asyncio.sleep(2.0)
            await client.flushall()
    finally:
        await client.aclose()
    await traffic
    await ledger.settle(deployment, receiver)


async def test_redis_stopped_and_restarted_mid_run_loses_nothing(
    deployment: Deployment, receiver: Receiver, throwaway_redis: ThrowawayRedis
) -> None:
    await deployment.start(receiver)
    ledger = Ledger("Redis stopped 4 s, restarted empty")
    traffic = Traffic(ledger, deployment)
    sending = asyncio.create_task(traffic.send(300, per_second=40))
    await asyncio.sleep(2.0)
    await asyncio.to_thread(throwaway_redis.stop)
    await asyncio.sleep(4.0)
    await asyncio.to_thread(throwaway_redis.start)
    await sending
    # Critical and high events are admitted without the limiter; normal and low get a 503 (retried
    # by the provider): nothing but those two answers.
    assert set(ledger.answers) <= {"200", "503"}, ledger.answers
    after = await traffic.send(50, per_second=50)  # Redis is back: everything is admitted again
    assert {status for _, status in after} == {200}, after
    await ledger.settle(deployment, receiver)
