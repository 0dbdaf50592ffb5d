"""Redis Lua scripts whose concurrent calls share one pipelined round trip.

Each call stays one atomic script run on its own keys; only the network trip is shared
(``gateway.batching``: calls that arrive while a pipeline is on its way leave together in the
next). One pipeline is in flight at a time, so a busy process sends fewer, fuller ones.

Calls go out as ``EVALSHA`` without redis-py's ``Script`` objects, whose pipelines ask
``SCRIPT EXISTS`` first: a round trip per pipeline. When Redis answers ``NOSCRIPT`` (it restarted,
or its scripts were flushed), the script is loaded and only the calls that were refused are sent
again; a call Redis ran is never run twice.
"""

from __future__ import annotations

from hashlib import sha1
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gateway.batching import Batcher

_Call = tuple[list[str], list[Any]]  # a script call's keys and args
MAX_PIPELINE, _PIPELINES = 256, 1


class Script:
    """A Lua script run by ``EVALSHA``, many calls to a pipeline, loaded again on ``NOSCRIPT``."""

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self._redis = redis
        self._source = source
        self._sha = sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run_many(self, calls: list[_Call]) -> list[Any]:
        """These calls in one pipeline now: each call's reply, or its error."""
        replies = await self._send(calls)
        if refused := [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]:
            await self._redis.script_load(self._source)
            for i, reply in zip(refused, await self._send([calls[i] for i in refused]), strict=True):
                replies[i] = reply
        return replies

    async def _send(self, calls: list[_Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


class PipelinedScript(Script):
    """A ``Script`` whose concurrent calls are batched into its pipelines."""

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        super().__init__(redis, source)
        self._batcher: Batcher[_Call, Any] = Batcher(self.run_many, max_items=MAX_PIPELINE, concurrency=_PIPELINES)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        """The script's reply to this call; a script error is raised to its caller only."""
        reply = await self._batcher.submit((keys, args))
        if isinstance(reply, Exception):
            raise reply
        return reply
