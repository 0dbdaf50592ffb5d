"""Stripe signature timestamps at the edge of the 300 s tolerance, both ways: inside it the
event is acknowledged, stored and delivered; past it the answer is a 400 and nothing is stored."""

from __future__ import annotations

import pytest

from tests.faults.harness import Deployment, Ledger, Receiver, Traffic, stored_ids

pytestmark = pytest.mark.slow
EDGES = {-295: 200, 295: 200, -310: 400, 310: 400}  # seconds from now; tolerance is 300


async def test_timestamps_at_the_tolerance_edge(deployment: Deployment, receiver: Receiver) -> None:
    await deployment.start(receiver)
    ledger = Ledger("Stripe timestamps at ±300 s tolerance edge")
    traffic = Traffic(ledger, deployment)
    refused: set[str] = set()
    for offset, expected in EDGES.items():
        answers = await traffic.send(40, per_second=100, timestamp_offset=offset)
        assert {status for _, status in answers} == {expected}, (offset, answers[:3])
        if expected != 200:
            refused |= {event_id for event_id, _ in answers}
    await ledger.settle(deployment, receiver)
    assert not refused & await stored_ids(deployment.env["HOOKGATE_DATABASE_URL"], deployment.source["id"])
    assert not refused & set(receiver.delivered)
