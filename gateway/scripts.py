"""Redis Lua scripts whose concurrent calls share one pipelined round trip.

Each call stays one atomic script run on its own keys; only the network trip is shared
(``gateway.batching``: calls that arrive while others are on their way leave together).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gateway.batching import Batcher

_Call = tuple[list[str], list[Any]]  # a script call's keys and args
_MAX_PIPELINE, _PIPELINES = 256, 4


class PipelinedScript:
    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self._redis = redis
        self._script = redis.register_script(source)
        self._batcher: Batcher[_Call, Any] = Batcher(self._run_many, max_items=_MAX_PIPELINE, concurrency=_PIPELINES)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        """The script's reply to this call."""
        return await self._batcher.submit((keys, args))

    async def _run_many(self, calls: list[_Call]) -> list[Any]:
        if len(calls) == 1:  # a pipeline would add a SCRIPT EXISTS round trip for nothing
            [(keys, args)] = calls
            return [await self._script(keys=keys, args=args)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())
