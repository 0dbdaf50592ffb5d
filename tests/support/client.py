"""The test client for the app, which waits for the app without stopping the test's event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.testing.transport import TestClientTransport


class _WaitInThread(TestClientTransport):  # type: ignore[type-arg]
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await asyncio.to_thread(self.handle_request, request)


class AppClient(AsyncTestClient[Litestar]):
    """Litestar's AsyncTestClient runs the app on a portal thread but waits for the answer by
    blocking the caller's loop, where the tests run workers and receivers. A request that waits
    for one of them (a row a worker has locked, a receiver's reply) then deadlocks, and every
    timeout on that loop stops, as a CI run that hung for 90 minutes showed. This one waits in a
    thread, so the loop runs on and concurrent requests really are concurrent, as in production.
    """

    def __init__(self, app: Litestar, *, raise_server_exceptions: bool = True, root_path: str = "", **options: Any) -> None:
        super().__init__(app, raise_server_exceptions=raise_server_exceptions, root_path=root_path, **options)
        self._transport = _WaitInThread(client=self, raise_server_exceptions=raise_server_exceptions, root_path=root_path)
