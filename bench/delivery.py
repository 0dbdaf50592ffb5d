"""Delivery benchmark: end-to-end latency at a fixed offered rate, and deliveries per second per
worker process at saturation.

Real processes on the local Postgres and Redis (a fresh database each run, seeded with
``--history`` delivered events and analyzed: a live gateway's tables and plans): ``hookgate serve``,
``--workers`` ``hookgate worker`` processes and a fast receiver (``bench/targets/receiver.py`` on
Granian, answering 200 at once). One tenant, one endpoint subscribed to everything.

- **Open loop**: Stripe-signed events posted at ``--rate`` per second for ``--seconds``, each on
  its schedule whatever the answers (no coordinated omission); the latency of each is its arrival
  at the receiver minus its ingest 2xx, both on the machine's monotonic clock. Also the CPU every
  process on the machine spent per acknowledged event (gateway, workers, receiver, Postgres, Redis,
  the load generator), from the first post until the last delivery: on a shared 2-core box it
  varies far less from run to run than the latency does.
- **Saturation**: ``--backlog`` due deliveries written straight to the database, then the time
  until the receiver has them all: deliveries per second, and that divided by the worker processes.

Writes ``bench/results/delivery.json``. Run from the repository root:
``.venv/bin/python -m bench.delivery [--rate 500 --seconds 10 --backlog 10000 --workers 1 --history 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from itertools import cycle
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench import procstats
from bench.poster import Poster
from bench.servers import granian_argv, hookgate_env, unthrottled_tenant, wait_port
from bench.stages import percentiles, stages
from tests.support.backlog import BACKLOG_PREFIX, add_backlog, add_history
from tests.support.processes import HOOKGATE, Process, serve
from tests.support.services import free_port, fresh_services
from tests.support.stripe_events import fixture_names, signed_stripe, stripe_event

RESULTS = Path(__file__).with_name("results")


def _arrivals(log: Path) -> dict[str, float]:
    """First arrival of each event id (retries and duplicates keep the first)."""
    seen: dict[str, float] = {}
    text = log.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():  # the receiver may be writing the last line
        event_id, at = line.split()
        seen.setdefault(event_id, float(at))
    return seen


def _delivered(log: Path, count: int) -> bool:
    """Whether ``count`` distinct events arrived; the line count (cheap, polled every 50 ms beside
    the worker) must get there first."""
    with log.open("rb") as lines:
        if sum(chunk.count(b"\n") for chunk in iter(lambda: lines.read(1 << 20), b"")) < count:
            return False
    return len(_arrivals(log)) >= count


async def _until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        await asyncio.sleep(0.05)


async def _open_loop(base_url: str, source: dict[str, Any], rate: float, seconds: float) -> tuple[dict[str, float], int]:
    """Post at ``rate``/s on a fixed schedule; returns each acknowledged event's 2xx time, and the failures.

    The load generator shares the two cores with what it measures, so it spends as little as it
    can there: every request is built and signed before the clock starts (Stripe's tolerance is
    five minutes) and written whole on a kept-alive connection (``bench.poster``; aiohttp spent
    about twice its CPU per request, docs/PERFORMANCE.md).
    """
    acked: dict[str, float] = {}
    failures = 0
    names = cycle(fixture_names())
    url = httpx.URL(base_url)
    poster = Poster(url.host, url.port or 80)
    path = httpx.URL(source["ingest_url"]).path
    events = [stripe_event(next(names)) for _ in range(int(rate * seconds))]
    requests = [(event["id"], poster.build(path, *signed_stripe(event, source["secret"]))) for event in events]

    async def post(event_id: str, raw: bytes) -> None:
        nonlocal failures
        if await poster.post(raw) == 200:
            acked[event_id] = time.monotonic()
        else:
            failures += 1

    start, posts = time.monotonic(), []
    for n, request in enumerate(requests):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        posts.append(asyncio.create_task(post(*request)))
    try:
        await asyncio.gather(*posts)
    finally:
        poster.close()
    return acked, failures


def _cpu_seconds(processes: list[Process]) -> float:
    """CPU spent so far by these processes and their children (a gateway's server workers)."""
    return sum(stat.cpu_seconds for p in processes if p.proc is not None for stat in procstats.tree(p.proc.pid))


def _cpu_by_role(roles: dict[str, list[Process]]) -> dict[str, float]:
    """CPU seconds so far of each role, and of what else shares the machine with them: Postgres
    (server and backends), Redis and this process, the load generator."""
    spent = {role: _cpu_seconds(processes) for role, processes in roles.items()}
    return {
        **spent,
        "postgres": sum(stat.cpu_seconds for stat in procstats.named("postgres")),
        "redis": sum(stat.cpu_seconds for stat in procstats.named("redis-server")),
        "load_generator": sum(stat.cpu_seconds for stat in procstats.tree(os.getpid())) - sum(spent.values()),
    }


async def run(rate: float, seconds: float, backlog: int, workers: int, history: int) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="hookgate-delivery-bench-"))
    received, receiver_port, port = logs / "received.log", free_port(), str(free_port())
    received.touch()
    result: dict[str, Any] = {"rate_per_second": rate, "seconds": seconds, "backlog": backlog, "workers": workers, "history": history}
    async with fresh_services("hookgate_bench", redis_db=5) as (url, redis_url):
        env = hookgate_env(url, redis_url, port, allow_private_endpoints="true", log_level="WARNING",
                           tenant_delivery_concurrency="1000", worker_metrics_port="0")
        receiver_argv = granian_argv("bench.targets.receiver:app", 1, receiver_port)
        with Process(receiver_argv, logs / "receiver.log", {"RECEIVER_LOG": str(received)}) as receiver, serve(env, logs) as gateway:
            await asyncio.to_thread(wait_port, receiver, receiver_port)
            await asyncio.to_thread(gateway.wait_http, f"http://127.0.0.1:{port}/healthz")
            base_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                         limits=httpx.Limits(max_connections=200)) as http:
                tenant, auth = await unthrottled_tenant(http, delivery_concurrency=1000)
                source = (await http.post("/api/v1/sources", json={"name": "stripe", "provider": "stripe"}, headers=auth)).json()
                endpoint = (await http.post("/api/v1/endpoints", json={"url": f"http://127.0.0.1:{receiver_port}/hook"}, headers=auth)).json()
                if history:
                    body = signed_stripe(stripe_event(fixture_names()[0]), source["secret"])[0]
                    await add_history(url, uuid.UUID(tenant["id"]), uuid.UUID(source["id"]), uuid.UUID(endpoint["id"]), history, body)
                worker_procs = [Process([*HOOKGATE, "worker"], logs / f"worker-{i}.log", env) for i in range(workers)]
                for worker in worker_procs:
                    worker.start()
                try:
                    await _open_loop(base_url, source, min(rate, 50), 2)  # warm-up: the workers are up, pools are open
                    await _until(lambda: _delivered(received, int(min(rate, 50) * 2)), 60, "the warm-up deliveries")
                    roles = {"gateway": [gateway], "workers": worker_procs, "receiver": [receiver]}
                    processes_before = _cpu_by_role(roles)
                    cpu_before = procstats.machine()
                    acked, failures = await _open_loop(base_url, source, rate, seconds)
                    open_loop_cpu = procstats.machine_share(cpu_before, procstats.machine())
                    await _until(lambda: set(acked) <= set(_arrivals(received)), 120, "every acknowledged event delivered")
                    arrivals = _arrivals(received)
                    result["open_loop"] = {
                        "acknowledged": len(acked), "ingest_failures": failures,
                        "latency": percentiles([arrivals[i] - at for i, at in acked.items()]),
                        "stages": await stages(url, acked, arrivals),
                        "machine_cpu_percent": open_loop_cpu,
                        "cpu_ms_per_event": {
                            role: round(1000 * (seconds - processes_before[role]) / max(1, len(acked)), 3)
                            for role, seconds in _cpu_by_role(roles).items()
                        },
                    }

                    before_stats = [procstats.tree(w.proc.pid) for w in worker_procs if w.proc is not None]
                    cpu_before = procstats.machine()
                    already = len(_arrivals(received))
                    started = time.monotonic()
                    await add_backlog(url, uuid.UUID(tenant["id"]), uuid.UUID(endpoint["id"]), backlog)
                    await _until(lambda: _delivered(received, already + backlog), 600, "the backlog delivered")
                    elapsed = time.monotonic() - started
                    after_stats = [procstats.tree(w.proc.pid) for w in worker_procs if w.proc is not None]
                    per_second = backlog / elapsed
                    backlog_arrivals = sorted(at for event_id, at in _arrivals(received).items() if event_id.startswith(BACKLOG_PREFIX))
                    delivering = backlog_arrivals[-1] - backlog_arrivals[0]
                    result["saturation"] = {
                        "deliveries": backlog, "seconds": round(elapsed, 2), "deliveries_per_second": round(per_second, 1),
                        "per_worker_process": round(per_second / workers, 1),
                        # Without the bench's own insert of the backlog and the worker's first poll:
                        # from the first delivery of the backlog to its last.
                        "first_delivery_after_seconds": round(backlog_arrivals[0] - started, 2),
                        "delivering_seconds": round(delivering, 2),
                        "delivering_per_worker_process": round(backlog / delivering / workers, 1),
                        "workers": [procstats.usage(b, a) for b, a in zip(before_stats, after_stats, strict=True)],
                        "machine_cpu_percent": procstats.machine_share(cpu_before, procstats.machine()),
                    }
                finally:
                    for worker in worker_procs:
                        worker.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500, help="offered events per second (open loop)")
    parser.add_argument("--seconds", type=float, default=10, help="length of the open-loop phase")
    parser.add_argument("--backlog", type=int, default=10_000, help="due deliveries for the saturation phase")
    parser.add_argument("--workers", type=int, default=1, help="hookgate worker processes")
    parser.add_argument("--history", type=int, default=20_000,
                        help="delivered events in the database before the run (and ANALYZE): a live gateway's tables")
    args = parser.parse_args()
    result = uvloop.run(run(args.rate, args.seconds, args.backlog, args.workers, args.history))
    result["command"] = " ".join(sys.argv)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "delivery.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
