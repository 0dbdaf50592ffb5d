"""A TCP proxy that can partition the network between the app and a server: while partitioned,
nothing passes either way and new connections hang unanswered; once healed, new connections work
but those opened before the partition stay dead, as after a failover (their peer is gone, and no
reset ever arrives)."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.services import free_port


class PartitionProxy:
    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self._upstream = upstream_port
        self._era = 0  # bumped by each partition: connections of an earlier era never pass again
        self._healed = asyncio.Event()
        self._healed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> PartitionProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def partition(self) -> None:
        self._era += 1
        self._healed.clear()

    def heal(self) -> None:
        self._healed.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._healed.wait()  # accepted, but unanswered until the network is back
            era = self._era
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
            await asyncio.gather(self._pipe(reader, upstream_writer, era), self._pipe(upstream_reader, writer, era))
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, era: int) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if era != self._era:  # partitioned since it opened: held for good, never forwarded
                    await asyncio.Event().wait()
                sink.write(data)
                await sink.drain()
        sink.close()
