"""Postgres stopped mid-run: ingest answers 503 (never a 2xx without the commit), and ingest and
deliveries resume when it returns."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.harness import Deployment, Ledger, Receiver, Traffic
from tests.support.services import ThrowawayPostgres

pytestmark = pytest.mark.slow


async def test_postgres_stopped_mid_run_answers_503_and_loses_nothing(
    deployment: Deployment, receiver: Receiver, throwaway_postgres: ThrowawayPostgres
) -> None:
    await deployment.start(receiver)
    ledger = Ledger("Postgres stopped 4 s mid-run")
    traffic = Traffic(ledger, deployment)
    sending = asyncio.create_task(traffic.send(300, per_second=40))
    await asyncio.sleep(2.5)
    try:
        await asyncio.to_thread(throwaway_postgres.stop)
        await asyncio.sleep(4.0)
    finally:
        await asyncio.to_thread(throwaway_postgres.start)
    await sending
    assert ledger.answers["503"] > 0, ledger.answers  # the outage was seen by ingest
    assert set(ledger.answers) <= {"200", "503"}, ledger.answers
    # Once it is back, ingest works again at once: every event sent now is acknowledged.
    after = await traffic.send(50, per_second=50)
    assert {status for _, status in after} == {200}, after
    await ledger.settle(deployment, receiver)
