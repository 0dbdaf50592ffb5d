"""A bulk replay of 2,000 stored events in production mode (``hookgate serve`` + ``hookgate
worker`` on Postgres and Redis), its worker killed with SIGKILL midway: a second worker finishes
the job from its committed cursor, no matching event skipped, none queued twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from gateway.database import utcnow
from tests.conftest import OPERATOR_KEY
from tests.support.backlog import add_events
from tests.support.processes import HOOKGATE, Process, serve
from tests.support.receiver import Script, Server, wait_until

pytestmark = pytest.mark.slow
TYPES = ("charge.succeeded", "invoice.paid", "customer.updated", "invoice.created")


async def test_a_bulk_replay_survives_kill_9_of_its_worker(production_env: dict[str, str], tmp_path: Path) -> None:
    # 64 slots: the attempts in flight at the kill, the only ones that may repeat, are at most that many.
    env = {**production_env, "HOOKGATE_REPLAY_BATCH_SIZE": "100", "HOOKGATE_REPLAY_MAX_IN_FLIGHT": "200",
           "HOOKGATE_DELIVERY_CONCURRENCY": "64"}
    base = env["HOOKGATE_PUBLIC_URL"]
    async with Server(Script([(200, {}, 0.01)])) as receiver:
        with serve(env, tmp_path) as gateway:
            await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                operator = {"authorization": f"Bearer {OPERATOR_KEY}"}
                tenant = (await http.post("/api/v1/tenants", json={"name": "Replay"}, headers=operator)).json()
                auth = {"authorization": f"Bearer {tenant['api_key']}"}
                source = (await http.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers=auth)).json()
                await http.post("/api/v1/endpoints", json={"url": receiver.url}, headers=auth)
                start = utcnow() - timedelta(days=1)
                stored = await add_events(
                    env["HOOKGATE_DATABASE_URL"],
                    uuid.UUID(tenant["id"]),
                    uuid.UUID(source["id"]),
                    [(TYPES[i % len(TYPES)], start + timedelta(seconds=30 * i)) for i in range(2000)],
                )
                since, until = start + timedelta(hours=2), start + timedelta(hours=14)
                wanted = {external for external, kind, at in stored if since <= at < until and kind.startswith("invoice.")}
                created = await http.post(
                    "/api/v1/replays",
                    json={"since": since.isoformat(), "until": until.isoformat(), "types": ["invoice.*"]},
                    headers=auth,
                )
                assert created.status_code == 202 and created.json()["total"] == len(wanted) == 720
                job_url = f"/api/v1/replays/{created.json()['id']}"

                first = Process([*HOOKGATE, "worker"], tmp_path / "worker1.log", env)
                first.start()
                await wait_until(lambda: len(receiver.requests) >= 250, timeout=60, what="the replay under way")
                await asyncio.to_thread(first.kill)
                midway = (await http.get(job_url, headers=auth)).json()
                assert midway["status"] == "running" and 0 < midway["done"] < midway["total"]

                with Process([*HOOKGATE, "worker"], tmp_path / "worker2.log", env):
                    for _ in range(600):
                        job = (await http.get(job_url, headers=auth)).json()
                        if job["status"] != "running":
                            break
                        await asyncio.sleep(0.1)
                    assert job["status"] == "completed" and job["done"] == job["total"] == len(wanted)
                    await wait_until(lambda: set(json.loads(r.body)["id"] for r in receiver.requests) >= wanted, timeout=60, what="every replay")

                delivered = Counter(json.loads(r.body)["id"] for r in receiver.requests)
                assert set(delivered) == wanted  # none skipped, nothing outside the filter
                queued, cursor = [], ""
                while True:
                    page = (await http.get(f"/api/v1/deliveries?limit=200&replay_job_id={job['id']}{cursor}", headers=auth)).json()
                    queued += page["data"]
                    if not page["next_cursor"]:
                        break
                    cursor = f"&cursor={page['next_cursor']}"
                assert len(queued) == len({d["event_id"] for d in queued}) == len(wanted)  # each event queued once
                assert sum(delivered.values()) - len(wanted) <= int(env["HOOKGATE_DELIVERY_CONCURRENCY"])  # only attempts in flight at the kill repeat
