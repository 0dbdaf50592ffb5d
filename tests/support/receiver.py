"""A real HTTP/1.1 receiver on 127.0.0.1 for delivery tests: records requests, answers as told."""

from __future__ import annotations

import asyncio
import http
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


Responder = Callable[[Received, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A real HTTP/1.1 server on 127.0.0.1: counts connections, records requests, answers via ``respond``."""

    def __init__(self, respond: Responder, *, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        self._respond = respond
        self._tls = tls
        self._port = port  # fixed, so a receiver can go down and come back at the same URL
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.requests: list[Received] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port, ssl=self._tls)
        self.port: int = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (task := asyncio.current_task()) is not None:
            self._handlers.add(task)
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")[:-2]
            method, target, _ = request_line.split(" ", 2)
            headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Received(method, target, headers, body)
            self.requests.append(request)
            await self._respond(request, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Responder:
    async def respond(request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, {"content-length": str(len(body)), **(headers or {})}) + body)
        await writer.drain()

    return respond


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Script:
    """What the receiver answers, request by request; the last entry repeats."""

    answers: list[tuple[int, dict[str, str], float]] = field(default_factory=lambda: [(200, {}, 0.0)])
    served: int = 0

    async def __call__(self, request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, headers, delay = self.answers[min(self.served, len(self.answers) - 1)]
        self.served += 1
        if delay:
            await asyncio.sleep(delay)
        writer.write(head(status, {"content-length": "2", **headers}) + b"ok")
        await writer.drain()
