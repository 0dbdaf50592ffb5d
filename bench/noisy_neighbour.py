"""Noisy neighbour at scale: a quiet tenant's delivery latency with and without a flooder.

Real processes on the local Postgres and Redis (a fresh database each run): ``hookgate serve``
and one ``hookgate worker``. The flooder has ``--backlog`` critical deliveries due at once to an
endpoint that takes ``--slow`` seconds per request; the quiet tenant posts ``--events`` critical
events at ``--rate`` per second to a fast endpoint. Latency is ingest 2xx → arrival at the
receiver, measured on one clock (this process). Prints p50/p99 of both runs and their ratio and
writes ``bench/results/noisy_neighbour_c<concurrency>.json``.

Run: ``.venv/bin/python -m bench.noisy_neighbour [--backlog 20000] [--events 100]`` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.stages import percentiles, stages
from tests.support.backlog import add_backlog, add_history, open_deliveries
from tests.support.processes import HOOKGATE, Process, serve
from tests.support.receiver import Script, Server, wait_until
from tests.support.services import free_port, fresh_services
from tests.support.stripe_events import signed_stripe, stripe_event

RESULTS = Path(__file__).with_name("results")
OPERATOR_KEY = "hgop_bench-operator"


async def _tenant(http: httpx.AsyncClient, name: str, endpoint_url: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    tenant = (await http.post("/api/v1/tenants", json={"name": name}, headers={"authorization": f"Bearer {OPERATOR_KEY}"})).json()
    auth = {"authorization": f"Bearer {tenant['api_key']}"}
    source = (await http.post("/api/v1/sources", json={"name": "stripe", "provider": "stripe"}, headers=auth)).json()
    endpoint = (await http.post("/api/v1/endpoints", json={"url": endpoint_url}, headers=auth)).json()
    return tenant, source, endpoint


async def _quiet_latencies(
    http: httpx.AsyncClient, source: dict[str, Any], receiver: Server, events: int, rate: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Post events at a steady rate; returns each event's 2xx time and its arrival (its latency is the difference)."""
    acknowledged: dict[str, float] = {}

    async def post_one() -> None:
        event = stripe_event("charge_succeeded")
        body, headers = signed_stripe(event, source["secret"])
        (await http.post(source["ingest_url"], content=body, headers=headers)).raise_for_status()
        acknowledged[event["id"]] = time.monotonic()

    posts = []
    for _ in range(events):
        posts.append(asyncio.create_task(post_one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*posts)
    await wait_until(lambda: len(receiver.requests) >= events, timeout=120, what="the quiet tenant's deliveries")
    return acknowledged, {json.loads(r.body)["id"]: r.at for r in receiver.requests}


@dataclass(frozen=True)
class Scenario:
    backlog: int
    events: int
    rate: float
    slow: float
    concurrency: int
    share: int
    history: int


async def run(scenario: Scenario) -> dict[str, Any]:
    async with fresh_services("hookgate_bench", redis_db=3) as (url, redis_url):
        return await _run(url, redis_url, **dataclasses.asdict(scenario))


async def _run(
    url: str, redis_url: str, *, backlog: int, events: int, rate: float, slow: float, concurrency: int, share: int, history: int
) -> dict[str, Any]:
    port, logs = str(free_port()), Path(tempfile.mkdtemp())
    env = {
        "HOOKGATE_DATABASE_URL": url, "HOOKGATE_REDIS_URL": redis_url, "HOOKGATE_SECRET_KEY": "bench-secret-" + "k" * 32,
        "HOOKGATE_OPERATOR_KEY": OPERATOR_KEY, "HOOKGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "HOOKGATE_ALLOW_PRIVATE_ENDPOINTS": "true", "HOOKGATE_DELIVERY_CONCURRENCY": str(concurrency),
        "HOOKGATE_TENANT_DELIVERY_CONCURRENCY": str(share), "HOOKGATE_LOG_LEVEL": "WARNING", "PORT": port,
    }
    result: dict[str, Any] = {"backlog": backlog, "events": events, "rate_per_second": rate, "slow_seconds": slow,
                              "delivery_concurrency": concurrency, "tenant_delivery_concurrency": share, "history": history}
    async with Server(Script([(200, {}, slow)])) as slow_receiver, Server(Script()) as quiet_receiver:
        with serve(env, logs) as gateway, Process([*HOOKGATE, "worker"], logs / "worker.log", env):
            await asyncio.to_thread(gateway.wait_http, f"http://127.0.0.1:{port}/healthz")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                quiet, quiet_source, quiet_endpoint = await _tenant(http, "Quiet", quiet_receiver.url)
                if history:  # the plans and statistics of a live gateway's database (bench/README.md)
                    body = signed_stripe(stripe_event("charge_succeeded"), quiet_source["secret"])[0]
                    await add_history(url, uuid.UUID(quiet["id"]), uuid.UUID(quiet_source["id"]), uuid.UUID(quiet_endpoint["id"]), history, body)
                await _quiet_latencies(http, quiet_source, quiet_receiver, 5, rate)  # warm-up: the worker is up
                quiet_receiver.requests.clear()
                result["alone"] = await _summary(url, *await _quiet_latencies(http, quiet_source, quiet_receiver, events, rate))
                flooder, _, flood_endpoint = await _tenant(http, "Flooder", slow_receiver.url)
                quiet_receiver.requests.clear()
                flooder_id = uuid.UUID(flooder["id"])
                await add_backlog(url, flooder_id, uuid.UUID(flood_endpoint["id"]), backlog)
                await wait_until(lambda: len(slow_receiver.requests) >= concurrency, timeout=30, what="the flood")
                result["with_flood"] = await _summary(url, *await _quiet_latencies(http, quiet_source, quiet_receiver, events, rate))
                result["flood_left_open"] = await open_deliveries(url, flooder_id)
    result["p50_ratio"] = round(result["with_flood"]["p50_ms"] / result["alone"]["p50_ms"], 2)
    result["p99_ratio"] = round(result["with_flood"]["p99_ms"] / result["alone"]["p99_ms"], 2)
    return result


async def _summary(database_url: str, acked: dict[str, float], arrivals: dict[str, float]) -> dict[str, Any]:
    """The quiet tenant's latency, and where it went (``bench.stages``)."""
    return {**percentiles([arrivals[i] - at for i, at in acked.items()]), "stages": await stages(database_url, acked, arrivals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=20_000, help="the flooder's due deliveries")
    parser.add_argument("--events", type=int, default=100, help="the quiet tenant's events per run")
    parser.add_argument("--rate", type=float, default=10.0, help="the quiet tenant's events per second")
    parser.add_argument("--slow", type=float, default=0.2, help="seconds the flooder's endpoint takes")
    parser.add_argument("--concurrency", type=int, default=64, help="HOOKGATE_DELIVERY_CONCURRENCY")
    parser.add_argument("--share", type=int, default=16, help="HOOKGATE_TENANT_DELIVERY_CONCURRENCY")
    parser.add_argument("--history", type=int, default=20_000, help="delivered events already in the database (0: a fresh one)")
    args = parser.parse_args()
    result = asyncio.run(run(Scenario(**vars(args))))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"noisy_neighbour_c{args.concurrency}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
