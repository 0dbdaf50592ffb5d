"""``kill -9`` of delivery workers at random moments while deliveries are in flight."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.faults.harness import Deployment, Ledger, Receiver, Traffic

pytestmark = pytest.mark.slow


async def test_kill_9_of_workers_at_random_moments_loses_nothing(deployment: Deployment, receiver: Receiver) -> None:
    receiver.latency = 0.05  # requests are in flight whenever a worker dies
    await deployment.start_gateway()
    await deployment.provision(receiver)
    for _ in range(2):
        await deployment.start_worker()
    ledger = Ledger("worker kill -9 (4 times, random moments)")
    traffic = asyncio.create_task(Traffic(ledger, deployment).send(300, per_second=40))
    rng = random.Random()
    for _ in range(4):
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        victim = rng.choice([w for w in deployment.workers if w.proc is not None and w.proc.poll() is None])
        await asyncio.to_thread(victim.kill)
        await deployment.start_worker()
    await traffic
    await ledger.settle(deployment, receiver)
