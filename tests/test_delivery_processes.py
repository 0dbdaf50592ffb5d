"""Production mode as real processes: ``hookgate serve`` + ``hookgate worker`` on Postgres and
Redis, and Redis flushed while doorbell jobs wait for a worker. Workers killed mid-delivery and
the other faults are in tests/faults/."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook

from tests.conftest import OPERATOR_KEY
from tests.support.processes import HOOKGATE, Process, serve
from tests.support.receiver import Script, Server, wait_until
from tests.support.stripe_events import signed_stripe, stripe_event

pytestmark = pytest.mark.slow


def _worker(env: dict[str, str], tmp_path: Path, n: int = 1) -> Process:
    return Process([*HOOKGATE, "worker"], tmp_path / f"worker{n}.log", env)


async def _setup(base: str, receiver_url: str) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        tenant = (await http.post("/api/v1/tenants", json={"name": "Prod"}, headers={"authorization": f"Bearer {OPERATOR_KEY}"})).json()
        auth = {"authorization": f"Bearer {tenant['api_key']}"}
        source = (await http.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers=auth)).json()
        endpoint = (await http.post("/api/v1/endpoints", json={"url": receiver_url}, headers=auth)).json()
        return auth, source, endpoint


async def _ingest(source: dict[str, Any], count: int) -> list[str]:
    ids = []
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(count):
            event = stripe_event()
            body, headers = signed_stripe(event, source["secret"])
            response = await http.post(source["ingest_url"], content=body, headers=headers)
            assert response.status_code == 200, response.text
            ids.append(event["id"])
    return ids


async def _succeeded(base: str, auth: dict[str, str]) -> int:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        total, cursor = 0, ""
        while True:
            page = (await http.get(f"/api/v1/deliveries?status=succeeded&limit=200{cursor}", headers=auth)).json()
            total += len(page["data"])
            if not page["next_cursor"]:
                return total
            cursor = f"&cursor={page['next_cursor']}"


async def _all_succeed(base: str, auth: dict[str, str], count: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (done := await _succeeded(base, auth)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"only {done}/{count} delivered"
        await asyncio.sleep(0.2)


async def test_serve_and_worker_deliver_within_a_second(production_env: dict[str, str], tmp_path: Path) -> None:
    base = production_env["HOOKGATE_PUBLIC_URL"]
    async with Server(Script()) as receiver:
        with serve(production_env, tmp_path) as gateway, _worker(production_env, tmp_path) as worker:
            await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
            await asyncio.to_thread(worker.wait_output, "worker started")
            auth, source, endpoint = await _setup(base, f"{receiver.url}/hook")
            [event_id] = await _ingest(source, 1)
            await wait_until(lambda: receiver.requests, timeout=5, what="the delivery")
            request = receiver.requests[0]
            assert Webhook(endpoint["secret"]).verify(request.body, request.headers)["id"] == event_id


async def test_flushall_with_100_pending_deliveries_loses_nothing(production_env: dict[str, str], tmp_path: Path) -> None:
    base = production_env["HOOKGATE_PUBLIC_URL"]
    async with Server(Script()) as receiver:
        with serve(production_env, tmp_path) as gateway:
            await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
            auth, source, _ = await _setup(base, receiver.url)
            sent = await _ingest(source, 100)  # no worker yet: the doorbell jobs wait in Redis
            redis = aioredis.from_url(production_env["HOOKGATE_REDIS_URL"])
            assert await redis.dbsize() > 0
            await redis.flushall()
            await redis.aclose()
            with _worker(production_env, tmp_path):
                await _all_succeed(base, auth, 100)
            assert {json.loads(r.body)["id"] for r in receiver.requests} == set(sent)
