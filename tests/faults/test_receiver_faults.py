"""The tenant's receiver misbehaves: down for a while, flapping, slower than the delivery
timeout. Every acknowledged event arrives once it is healthy; its circuit opened and closed
(seen as ``endpoint.circuit_*`` operational events at a second endpoint)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.faults.harness import Deployment, Ledger, Receiver, Traffic

pytestmark = pytest.mark.slow


@pytest.fixture
async def operations() -> AsyncIterator[Receiver]:
    """A second endpoint subscribed to ``endpoint.*``: where breaker changes are announced."""
    async with Receiver() as receiver:
        yield receiver


async def _start(deployment: Deployment, receiver: Receiver, operations: Receiver) -> None:
    await deployment.start_gateway()
    await deployment.provision(receiver)
    async with httpx.AsyncClient(base_url=deployment.base, timeout=10) as http:
        operations.secret = (await deployment.register(http, operations.url, event_types=["endpoint.*"]))["secret"]
    await deployment.start_worker()


async def _breaker_cycled(operations: Receiver) -> None:
    for _ in range(100):
        if operations.types["endpoint.circuit_opened"] and operations.types["endpoint.circuit_closed"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"breaker did not open and close: {dict(operations.types)}")


async def test_receiver_down_for_a_while(deployment: Deployment, receiver: Receiver, operations: Receiver) -> None:
    await receiver.down()
    await _start(deployment, receiver, operations)
    ledger = Ledger("receiver down 6 s")
    await Traffic(ledger, deployment).send(200, per_second=50)
    await asyncio.sleep(2.0)
    await receiver.up()
    await ledger.settle(deployment, receiver)
    await _breaker_cycled(operations)


async def test_receiver_flapping(deployment: Deployment, receiver: Receiver, operations: Receiver) -> None:
    await _start(deployment, receiver, operations)
    ledger = Ledger("receiver flapping (down/up/500 every 0.7 s)")
    traffic = asyncio.create_task(Traffic(ledger, deployment).send(200, per_second=40))
    for flap in range(9):
        await asyncio.sleep(0.7)
        if flap % 3 == 0:
            await receiver.down()
        elif flap % 3 == 1:
            await receiver.up()
            receiver.failing = True
        else:
            receiver.failing = False
    await traffic
    await ledger.settle(deployment, receiver)


async def test_receiver_slower_than_the_timeout(deployment: Deployment, receiver: Receiver, operations: Receiver) -> None:
    await _start(deployment, receiver, operations)
    receiver.latency = 3.0  # the delivery timeout is 2 s
    ledger = Ledger("receiver slow past the timeout for 5 s")
    traffic = asyncio.create_task(Traffic(ledger, deployment).send(200, per_second=40))
    await asyncio.sleep(5.0)
    receiver.latency = 0.0
    await traffic
    await ledger.settle(deployment, receiver)
    await _breaker_cycled(operations)
