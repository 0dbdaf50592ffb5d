"""The fault suite's one harness: real ``hookgate serve`` / ``hookgate worker`` processes on
throwaway Postgres and Redis, Stripe-signed traffic, a receiver that verifies every delivery
with the official Standard Webhooks library, and the one ledger every scenario is judged by.

A scenario sends events (``Traffic``), breaks something while they flow, then ``Ledger.settle``
waits — bounded — until the receiver has processed every acknowledged event, reads what the
database stored, appends the scenario's row to the report (``HOOKGATE_FAULT_REPORT``) and
asserts the promise: nothing acknowledged is lost, everything acknowledged is stored.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.database import create_engine
from gateway.events.models import Event
from tests.conftest import OPERATOR_KEY
from tests.support.processes import HOOKGATE, Process, serve
from tests.support.receiver import Received, Server, head
from tests.support.services import free_port
from tests.support.stripe_events import fixture_names, signed_stripe, stripe_event

REPORT_ENV = "HOOKGATE_FAULT_REPORT"
SETTLE_TIMEOUT = 90.0
# Shortened retry schedule (20 attempts over ~30 s) and breaker, so outages of a few seconds
# are ridden out instead of ending in the dead-letter queue.
FAST_ENV = {
    "HOOKGATE_RETRY_SCHEDULE": "0,0.5,1,1,1,1,1,2,2,2,2,2,2,2,2,2,2,2,2,2",
    "HOOKGATE_LEASE_SECONDS": "4",
    "HOOKGATE_SWEEPER_INTERVAL_SECONDS": "0.5",
    "HOOKGATE_DELIVERY_TIMEOUT": "2",
    "HOOKGATE_DELIVERY_CONNECT_TIMEOUT": "1",
    "HOOKGATE_BREAKER_FAILURE_THRESHOLD": "5",
    "HOOKGATE_BREAKER_COOLDOWN_SECONDS": "1",
    "HOOKGATE_BREAKER_MAX_COOLDOWN_SECONDS": "2",
    "HOOKGATE_WORKER_METRICS_PORT": "0",
    "HOOKGATE_ALLOW_PRIVATE_ENDPOINTS": "true",  # the receivers are on loopback
    # Admission is not under test here: every priority's budget covers a whole scenario.
    **{f"HOOKGATE_INGEST_LIMIT_{p}": "10000/10000" for p in ("CRITICAL", "HIGH", "NORMAL", "LOW")},
}


def report_path() -> Path:
    return Path(os.environ.get(REPORT_ENV) or Path(tempfile.gettempdir()) / "hookgate-fault-report.jsonl")


# --- the receiver -------------------------------------------------------------------------------


class Receiver:
    """A tenant's endpoint at a fixed port that can be up, down (nothing listening), failing
    (HTTP 500) or slow; it counts an event as delivered when it processed it and answered 2xx."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.secret = ""  # the endpoint's whsec_, known once it is registered
        self.failing = False
        self.latency = 0.0  # seconds before processing; past the delivery timeout the gateway gives up first
        self.delivered: Counter[str] = Counter()  # event id -> times processed
        self.types: Counter[str] = Counter()
        self.forged = 0  # requests whose signature did not verify
        self._server: Server | None = None

    async def __aenter__(self) -> Receiver:
        await self.up()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.down()

    async def up(self) -> None:
        if self._server is None:
            self._server = await Server(self._respond, port=self.port).__aenter__()

    async def down(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.__aexit__(None, None, None)

    async def _respond(self, request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)  # a receiver that processes even after the sender gave up
        status = 500 if self.failing else 200
        if status == 200:
            try:
                payload = Webhook(self.secret).verify(request.body, request.headers)
            except WebhookVerificationError:
                self.forged += 1
                status = 401
            else:
                self.delivered[payload.get("id") or request.headers["webhook-id"]] += 1
                self.types[payload["type"]] += 1
        writer.write(head(status, {"content-length": "0"}))
        await writer.drain()


# --- the deployment -----------------------------------------------------------------------------


@dataclass
class Deployment:
    """``hookgate serve`` and any number of ``hookgate worker`` processes on one environment."""

    env: dict[str, str]
    log_dir: Path
    workers: list[Process] = field(default_factory=list)
    gateway: Process | None = None
    auth: dict[str, str] = field(default_factory=dict)
    tenant_id: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    endpoint: dict[str, Any] = field(default_factory=dict)
    _restarts: itertools.count = field(default_factory=itertools.count)

    @property
    def base(self) -> str:
        return self.env["HOOKGATE_PUBLIC_URL"]

    async def start_gateway(self) -> None:
        self.gateway = serve(self.env, self.log_dir)
        self.gateway.start()
        await asyncio.to_thread(self.gateway.wait_http, f"{self.base}/healthz")

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()

    async def start_worker(self) -> Process:
        worker = Process([*HOOKGATE, "worker"], self.log_dir / f"worker{next(self._restarts)}.log", self.env)
        worker.start()
        self.workers.append(worker)
        await asyncio.to_thread(worker.wait_output, "worker started")
        return worker

    async def start(self, receiver: Receiver) -> None:
        """The gateway, a tenant with its source and endpoint at ``receiver``, and one worker."""
        await self.start_gateway()
        await self.provision(receiver)
        await self.start_worker()

    def stop(self) -> None:
        for process in [*self.workers, self.gateway]:
            if process is not None:
                process.stop()

    async def provision(self, receiver: Receiver, **endpoint: Any) -> None:
        """A tenant, a Stripe source and one endpoint (every event type) at the receiver."""
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            operator = {"authorization": f"Bearer {OPERATOR_KEY}"}
            tenant = (await http.post("/api/v1/tenants", json={"name": "Faults"}, headers=operator)).json()
            self.tenant_id, self.auth = tenant["id"], {"authorization": f"Bearer {tenant['api_key']}"}
            self.source = (await http.post("/api/v1/sources", json={"name": "stripe", "provider": "stripe"}, headers=self.auth)).json()
            self.endpoint = await self.register(http, receiver.url, **endpoint)
            receiver.secret = self.endpoint["secret"]

    async def register(self, http: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
        response = await http.post("/api/v1/endpoints", json={"url": url, **fields}, headers=self.auth)
        assert response.status_code == 201, response.text
        return response.json()


# --- traffic and the ledger -----------------------------------------------------------------------


@dataclass
class Ledger:
    """What was sent and acknowledged, and — after settling — stored and delivered."""

    scenario: str
    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    answers: Counter[str] = field(default_factory=Counter)  # status code, or "no answer" (connection cut) -> count

    def row(self, stored: set[str], receiver: Receiver) -> dict[str, Any]:
        delivered = set(receiver.delivered) & self.acknowledged
        return {
            "scenario": self.scenario,
            "sent": self.sent,
            "acknowledged": len(self.acknowledged),
            "stored": len(stored),
            "delivered": len(delivered),
            "lost": len(self.acknowledged - delivered),
            "duplicates": sum(receiver.delivered.values()) - len(receiver.delivered),
            "answers": dict(sorted(self.answers.items())),
        }

    async def settle(self, deployment: Deployment, receiver: Receiver, timeout: float = SETTLE_TIMEOUT) -> dict[str, Any]:
        """Wait until every acknowledged event was delivered (or ``timeout``), record the row, assert."""
        deadline = time.monotonic() + timeout
        while not self.acknowledged <= set(receiver.delivered) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stored = await stored_ids(deployment.env["HOOKGATE_DATABASE_URL"], deployment.source["id"])
        row = self.row(stored, receiver)
        with report_path().open("a") as report:
            report.write(json.dumps(row) + "\n")
        assert receiver.forged == 0, "a delivery failed Standard Webhooks verification"
        assert self.acknowledged <= stored, f"acknowledged but not stored: {sorted(self.acknowledged - stored)[:5]}"
        assert row["lost"] == 0, row
        assert set(receiver.delivered) <= stored, "delivered an event that was never stored (or not from this source)"
        return row


class Traffic:
    """Stripe-signed events from the real fixtures, each with a fresh id, at a steady pace."""

    def __init__(self, ledger: Ledger, deployment: Deployment, *, concurrency: int = 8) -> None:
        self._ledger = ledger
        self._deployment = deployment
        self._slots = asyncio.Semaphore(concurrency)
        self._names = itertools.cycle(random.Random(11).sample(fixture_names(), len(fixture_names())))

    async def send(self, count: int, per_second: float = 60.0, timestamp_offset: int = 0) -> list[tuple[str, int | str]]:
        """Send ``count`` events; returns (event id, status or "no answer") per event."""
        async with httpx.AsyncClient(timeout=10) as http:
            tasks = []
            for _ in range(count):
                await self._slots.acquire()
                tasks.append(asyncio.create_task(self._one(http, timestamp_offset)))
                await asyncio.sleep(1 / per_second)
            return list(await asyncio.gather(*tasks))

    async def _one(self, http: httpx.AsyncClient, timestamp_offset: int) -> tuple[str, int | str]:
        try:
            event = stripe_event(next(self._names))
            source = self._deployment.source
            body, headers = signed_stripe(event, source["secret"], int(time.time()) + timestamp_offset)
            self._ledger.sent += 1
            try:
                response = await http.post(source["ingest_url"], content=body, headers=headers)
            except httpx.TransportError:
                self._ledger.answers["no answer"] += 1
                return event["id"], "no answer"
            self._ledger.answers[str(response.status_code)] += 1
            if 200 <= response.status_code < 300:
                assert response.json()["duplicate"] is False
                self._ledger.acknowledged.add(event["id"])
            else:  # never a 2xx without the commit; anything else must be a problem document
                assert response.headers["content-type"].startswith("application/problem+json"), response.text
            return event["id"], response.status_code
        finally:
            self._slots.release()


async def stored_ids(database_url: str, source_id: str) -> set[str]:
    """The provider ids of the events stored from the source (Hookgate's own events are not counted)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(Event.external_id).where(Event.source_id == uuid.UUID(source_id)))
            return {row[0] for row in rows}
    finally:
        await engine.dispose()
