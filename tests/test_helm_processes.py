"""The chart's pods without a cluster: each container of the rendered chart is run as a real process
with exactly its command, args and environment (the image's ENV, then the ConfigMap, Secret or hook
Secret it references), against a real Postgres and Redis. The migration Job migrates an empty
database, the gateway and the worker answer their probes on the rendered ports, the gateway serves
the API on the migrated schema, and both stop on SIGTERM within their grace periods."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import redis.asyncio as aioredis
from dockerfile_parse import DockerfileParser

from tests.support.chart import CHART, ROOT, one, render
from tests.support.processes import Process
from tests.support.services import create_database, drop_database, free_port, test_postgres_url, test_redis_url

pytestmark = pytest.mark.slow
OPERATOR_KEY = "hgop_" + "c" * 40


@pytest.fixture
async def empty_services() -> AsyncIterator[tuple[str, str]]:
    """An empty database (no schema: the Job's work) and an emptied Redis database."""
    admin, name = test_postgres_url(), f"hookgate_helm_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name)
    redis_url = test_redis_url().rsplit("/", 1)[0] + "/6"
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        yield url, redis_url
    finally:
        await client.flushdb()
        await client.aclose()
        await drop_database(admin, name)


def _pod_env(container: dict[str, Any], documents: list[dict[str, Any]], tmp: Path) -> dict[str, str]:
    """What the container would see: the image's ENV, then envFrom, then env (later wins, as in Kubernetes)."""
    image = {key: value for key, value in DockerfileParser(str(ROOT / "Dockerfile")).envs.items() if key != "PATH"}
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **image, "TMPDIR": str(tmp)}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= one(documents, "ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            env |= one(documents, "Secret", source["secretRef"]["name"])["stringData"]
    for variable in container.get("env", []):
        ref = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = one(documents, "Secret", ref["name"])["stringData"][ref["key"]]
    return env


def _container(documents: list[dict[str, Any]], kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = one(documents, kind, name)["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _probe_url(container: dict[str, Any], probe: str) -> str:
    get = container[probe]["httpGet"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == get["port"])
    return f"http://127.0.0.1:{port}{get['path']}"


def _stop_within_grace(process: Process, pod: dict[str, Any]) -> int:
    """SIGTERM to the main process, as the kubelet sends it (after the container's preStop sleep, which
    also keeps it clear of Granian ignoring a SIGTERM while it still starts a worker: docs/DEPLOY.md);
    the exit code, which must come before the grace period ends."""
    assert process.proc is not None
    pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    time.sleep(pre_stop)
    os.kill(process.proc.pid, signal.SIGTERM)
    return process.proc.wait(timeout=pod["terminationGracePeriodSeconds"])


async def test_the_rendered_pods_run_the_real_processes(empty_services: tuple[str, str], tmp_path: Path) -> None:
    database_url, redis_url = empty_services
    values = {
        "secrets": {"secretKey": "k" * 40, "databaseUrl": database_url, "redisUrl": redis_url, "operatorKey": OPERATOR_KEY},
        "gateway": {"port": free_port(), "processes": 2},
        "worker": {"metricsPort": free_port()},
    }
    with helm.Chart.load(CHART) as chart:
        documents = render(chart, values, base={})

    # The migration Job: only its own env (the hook Secret's database URL), on an empty database.
    job_pod, job = _container(documents, "Job", "hg-hookgate-migrate")
    migrated = subprocess.run(
        [*job["command"], *job["args"]], env=_pod_env(job, documents, tmp_path), capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "database is at the latest schema" in migrated.stdout

    gateway_pod, gateway = _container(documents, "Deployment", "hg-hookgate-gateway")
    worker_pod, worker = _container(documents, "Deployment", "hg-hookgate-worker")
    with (
        Process([*gateway["command"], *gateway["args"]], tmp_path / "gateway.log", _pod_env(gateway, documents, tmp_path)) as serve,
        Process([*worker["command"], *worker["args"]], tmp_path / "worker.log", _pod_env(worker, documents, tmp_path)) as work,
    ):
        for process, container in ((serve, gateway), (work, worker)):
            process.wait_http(_probe_url(container, "livenessProbe"), timeout=60)
            process.wait_http(_probe_url(container, "readinessProbe"), timeout=60)
            ready = httpx.get(_probe_url(container, "readinessProbe"), timeout=5).json()
            assert ready["checks"] == {"database": "ok", "redis": "ok"}, ready
        base = _probe_url(gateway, "readinessProbe").removesuffix("/readyz")
        created = httpx.post(f"{base}/api/v1/tenants", json={"name": "Acme"}, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=10)
        assert created.status_code == 201, created.text  # the schema the Job made, the operator key from the Secret
        metrics = httpx.get(_probe_url(worker, "readinessProbe").replace("/readyz", "/metrics"), timeout=5)
        assert "hookgate_" in metrics.text
        assert _stop_within_grace(serve, gateway_pod) == 0, serve.output()[-3000:]
        assert _stop_within_grace(work, worker_pod) == 0, work.output()[-3000:]
