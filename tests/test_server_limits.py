"""Slow clients and oversized request heads against a real ``hookgate serve`` process: bounded
by Granian's HTTP/1 settings (``HOOKGATE_MAX_HEADER_BYTES``, ``HOOKGATE_HEADER_READ_TIMEOUT_SECONDS``),
answered 431 or dropped, while other clients are served meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support.processes import serve

pytestmark = pytest.mark.slow


async def _head(port: int, head: bytes) -> bytes | None:
    """The first bytes of the answer; None when the server reset the connection while the head was
    still being sent (its 431 can then be lost with the reset: TCP drops unread data)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(200), 30)
    except (BrokenPipeError, ConnectionResetError):
        return None
    finally:
        writer.close()


async def test_oversized_heads_get_431_and_slow_clients_are_dropped(production_env: dict[str, str], tmp_path: Path) -> None:
    env = {**production_env, "HOOKGATE_MAX_HEADER_BYTES": "16384", "HOOKGATE_HEADER_READ_TIMEOUT_SECONDS": "1"}
    port, base = int(env["PORT"]), env["HOOKGATE_PUBLIC_URL"]
    with serve(env, tmp_path) as gateway:
        await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
        small = await _head(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 4000 + b"\r\n\r\n")
        assert small is not None and small.startswith(b"HTTP/1.1 200")
        big = await _head(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 20_000 + b"\r\n\r\n")
        assert big is not None and big.startswith(b"HTTP/1.1 431"), big
        # A megabyte head: refused with 431 before it is read whole, or cut off; never served.
        huge = await _head(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 1_000_000 + b"\r\n\r\n")
        assert huge is None or huge.startswith(b"HTTP/1.1 431"), huge

        # A slowloris: heads that never finish. Each connection is dropped without an answer
        # once its time is up, and the server keeps answering everyone else meanwhile.
        slow = [asyncio.create_task(_head(port, b"POST /ingest/x HTTP/1.1\r\nhost: x\r\n")) for _ in range(20)]
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base}/healthz")).status_code == 200
        assert all(answer in (b"", None) for answer in await asyncio.gather(*slow))  # closed (or reset), unanswered
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base}/healthz")).status_code == 200
