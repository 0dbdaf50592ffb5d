"""``kill -9`` of the gateway (every Granian process) while events stream in: each event that
got a 2xx is stored and delivered; requests cut off get no answer, so the provider retries them."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.faults.harness import Deployment, Ledger, Receiver, Traffic

pytestmark = pytest.mark.slow


async def test_kill_9_of_the_gateway_during_ingest_loses_no_acknowledged_event(deployment: Deployment, receiver: Receiver) -> None:
    await deployment.start(receiver)
    ledger = Ledger("gateway kill -9 during ingest (twice)")
    traffic = asyncio.create_task(Traffic(ledger, deployment, concurrency=16).send(300, per_second=60))
    rng = random.Random()
    for _ in range(2):
        await asyncio.sleep(rng.uniform(1.0, 2.0))
        await asyncio.to_thread(deployment.kill_gateway)
        await deployment.start_gateway()
    await traffic
    assert ledger.answers["no answer"] > 0, ledger.answers  # requests were cut off by the kills
    await ledger.settle(deployment, receiver)
