"""A lean HTTP/1.1 poster for open-loop load: pre-built requests on kept-alive connections.

The delivery benchmark's load generator shares the two cores with what it measures. aiohttp's
client spent ~0.5 ms of CPU per request there (a quarter of a core at 500 events/s, more than the
receiver and Redis together), CPU the gateway and the worker then waited for; this spends ~0.27. This writes each
request as one pre-built buffer on an idle connection and reads back only the status line and
``Content-Length``: the bench needs the status and the time, nothing else. It speaks just what
``hookgate serve`` answers (fixed-length bodies, keep-alive), and is not a general client.
"""

from __future__ import annotations

import asyncio


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request at a time, answered with its status code."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc or ConnectionError("the server closed the connection"))

    def request(self, raw: bytes) -> asyncio.Future[int]:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return self._answer

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).split(b"\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head[1:] if line.lower().startswith(b"content-length:")), 0)
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[: end + 4 + length]
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(int(head[0].split()[1]))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Poster:
    """POSTs pre-built requests to one server, on as many kept-alive connections as are busy."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []

    def build(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        """The whole request, built once before the clock starts."""
        lines = [f"POST {path} HTTP/1.1", f"host: {self._host}:{self._port}", f"content-length: {len(body)}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def post(self, raw: bytes) -> int:
        """Send one built request; its status code."""
        connection = await self._connection()
        status = await connection.request(raw)
        self._idle.append(connection)
        return status

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, self._host, self._port)
        self._all.append(connection)
        return connection

    def close(self) -> None:
        for connection in self._all:
            connection.close()
