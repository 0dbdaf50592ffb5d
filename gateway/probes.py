"""The worker's own small HTTP listener: ``/metrics``, ``/healthz`` and ``/readyz``, the same
answers the gateway gives, for Prometheus and Kubernetes probes. Plain asyncio: three GET
routes do not need a framework in the delivery process."""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from gateway.health import ready
from gateway.metrics import exposition

Readiness = Callable[[], Awaitable[dict[str, str]]]
_READ_TIMEOUT = 5.0


async def serve_probes(host: str, port: int, readiness: Readiness) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
            while (await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            status, content_type, body = await _answer(parts[1] if len(parts) > 1 else "/", readiness)
            head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: {content_type}\r\n"
            writer.write(f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _answer(path: str, readiness: Readiness) -> tuple[int, str, bytes]:
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, exposition()
    if path == "/healthz":
        return 200, "application/json", b'{"status":"ok"}'
    if path == "/readyz":  # as the gateway's: deliveries go on from the database while Redis is down
        checks = await readiness()
        if not ready(checks, needs=("database",)):
            return 503, "application/json", json.dumps({"status": "not ready", "checks": checks}).encode()
        return 200, "application/json", json.dumps({"status": "ready" if ready(checks) else "degraded", "checks": checks}).encode()
    return 404, "application/json", b'{"status":"not found"}'
