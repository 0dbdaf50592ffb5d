"""Metrics of real processes: ``hookgate serve`` with two Granian workers sums both workers'
counters in /metrics (multiprocess mode), and ``hookgate worker`` serves its own /metrics,
/healthz and /readyz."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import OPERATOR_KEY
from tests.support.processes import HOOKGATE, Process, serve
from tests.support.receiver import Script, Server
from tests.support.services import free_port
from tests.support.stripe_events import signed_stripe, stripe_event
from tests.test_observability import samples, value

pytestmark = pytest.mark.slow


async def test_two_granian_workers_report_one_sum(production_env: dict[str, str], tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**production_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    base = env["HOOKGATE_PUBLIC_URL"]
    with serve(env, tmp_path, workers=2) as gateway:
        await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            tenant = (await http.post("/api/v1/tenants", json={"name": "M"}, headers={"authorization": f"Bearer {OPERATOR_KEY}"})).json()
            auth = {"authorization": f"Bearer {tenant['api_key']}"}
            source = (await http.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers=auth)).json()
        for _ in range(20):  # a connection each: the kernel spreads them over both workers
            body, headers = signed_stripe(stripe_event(), source["secret"])
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.post(source["ingest_url"], content=body, headers=headers)).status_code == 200
        writers = {path.name.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
        assert len(writers) >= 2  # both worker processes counted something
        for _ in range(4):  # whichever worker answers the scrape, the sum is the same
            async with httpx.AsyncClient(timeout=10) as http:
                found = samples((await http.get(f"{base}/metrics")).text)
            accepted = value(found, "hookgate_ingest_requests_total", tenant=tenant["id"], outcome="accepted")
            assert accepted == 20

    # The same directory again (an emptyDir outlives a container's restart): the last run's files
    # would count for ever (and its in-progress requests, cut off by a crash); they are dropped.
    with serve(env, tmp_path, workers=2) as gateway:
        await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
        async with httpx.AsyncClient(timeout=10) as http:
            found = samples((await http.get(f"{base}/metrics")).text)
        assert value(found, "hookgate_ingest_requests_total", tenant=tenant["id"], outcome="accepted") == 0


async def test_the_worker_process_serves_metrics_and_probes(production_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {
        **production_env,
        "HOOKGATE_WORKER_METRICS_PORT": str(port),
        "HOOKGATE_WORKER_METRICS_HOST": "127.0.0.1",
        "HOOKGATE_LOG_LEVEL": "DEBUG",  # a successful attempt's line is DEBUG
    }
    base = env["HOOKGATE_PUBLIC_URL"]
    async with Server(Script()) as receiver:
        with serve(env, tmp_path) as gateway, Process([*HOOKGATE, "worker"], tmp_path / "worker.log", env) as worker:
            await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
            await asyncio.to_thread(worker.wait_http, f"http://127.0.0.1:{port}/healthz")
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                tenant = (await http.post("/api/v1/tenants", json={"name": "W"}, headers={"authorization": f"Bearer {OPERATOR_KEY}"})).json()
                auth = {"authorization": f"Bearer {tenant['api_key']}"}
                source = (await http.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers=auth)).json()
                await http.post("/api/v1/endpoints", json={"url": receiver.url}, headers=auth)
                body, headers = signed_stripe(stripe_event(), source["secret"])
                assert (await http.post(source["ingest_url"], content=body, headers=headers)).status_code == 200
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as probes:
                for _ in range(100):
                    found = samples((await probes.get("/metrics")).text)
                    if value(found, "hookgate_deliveries_total", tenant=tenant["id"], outcome="succeeded") == 1:
                        break
                    await asyncio.sleep(0.1)
                assert value(found, "hookgate_delivery_attempts_total", tenant=tenant["id"], status_class="2xx") == 1
                ready = await probes.get("/readyz")
                assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}
            assert '"message": "attempt"' in worker.output() or '"message":"attempt"' in worker.output()  # JSON lines
