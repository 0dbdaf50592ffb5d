"""Postgres behind a network partition, then a failover: the connections open when it began never
answer again (no reset ever comes). Every statement has a time limit, so ingest answers 503 during
the partition and, once new connections work, ingest and deliveries resume on them; nothing
acknowledged is lost. Without the limit, the batch in flight waited for ever, and every later
ingest and delivery behind it."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from tests.faults.harness import Deployment, Ledger, Receiver, Traffic
from tests.support.proxy import PartitionProxy

pytestmark = pytest.mark.slow


async def test_a_postgres_partition_then_failover_answers_503_and_resumes(deployment: Deployment, receiver: Receiver) -> None:
    url = deployment.env["HOOKGATE_DATABASE_URL"]
    async with PartitionProxy(urlsplit(url).port or 5432) as proxy:
        deployment.env["HOOKGATE_DATABASE_URL"] = url.replace(f":{urlsplit(url).port}/", f":{proxy.port}/")
        deployment.env["HOOKGATE_DB_COMMAND_TIMEOUT_SECONDS"] = "2"
        await deployment.start(receiver)
        ledger = Ledger("Postgres partitioned 4 s, then failed over")
        traffic = Traffic(ledger, deployment)
        sending = asyncio.create_task(traffic.send(300, per_second=40))
        await asyncio.sleep(2.5)
        proxy.partition()
        await asyncio.sleep(4.0)
        proxy.heal()
        await sending
        assert ledger.answers["503"] > 0, ledger.answers  # the partition was seen by ingest
        assert set(ledger.answers) <= {"200", "503"}, ledger.answers  # answered, within the time limit
        await asyncio.sleep(3.0)  # statements sent before the heal reach their time limit
        after = await traffic.send(50, per_second=50)
        assert {status for _, status in after} == {200}, after
        await ledger.settle(deployment, receiver)
