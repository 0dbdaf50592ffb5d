"""What the benchmarks start: Granian-served ASGI apps, and Hookgate's own environment and an
unthrottled tenant (admission limits far above any load this machine can make)."""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import httpx

from tests.support.processes import Process

OPERATOR_KEY = "hgop_bench-operator"
_UNLIMITED = {"rate_per_second": 1_000_000, "burst": 1_000_000}


def granian_argv(app: str, workers: int, port: int) -> list[str]:
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(port), "--no-ws", app]


def wait_port(process: Process, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.proc is not None
        if process.proc.poll() is not None:
            raise RuntimeError(f"{process.argv} exited:\n{process.output()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open:\n{process.output()[-3000:]}")


def hookgate_env(database_url: str, redis_url: str, port: str, **settings: str) -> dict[str, str]:
    """Production mode on these services; ``settings`` are more ``HOOKGATE_*`` values (upper-cased)."""
    return {
        "HOOKGATE_DATABASE_URL": database_url, "HOOKGATE_REDIS_URL": redis_url, "HOOKGATE_SECRET_KEY": "bench-secret-" + "k" * 32,
        "HOOKGATE_OPERATOR_KEY": OPERATOR_KEY, "HOOKGATE_PUBLIC_URL": f"http://127.0.0.1:{port}", "PORT": port,
        **{f"HOOKGATE_{name.upper()}": value for name, value in settings.items()},
    }


async def unthrottled_tenant(http: httpx.AsyncClient, **fields: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A new tenant whose admission never refuses; returns it and its auth header."""
    operator = {"authorization": f"Bearer {OPERATOR_KEY}"}
    tenant = (await http.post("/api/v1/tenants", json={"name": "Bench"}, headers=operator)).json()
    update = {"limits": {p: _UNLIMITED for p in ("critical", "high", "normal", "low")}, **fields}
    (await http.patch(f"/api/v1/tenants/{tenant['id']}", json=update, headers=operator)).raise_for_status()
    return tenant, {"authorization": f"Bearer {tenant['api_key']}"}
