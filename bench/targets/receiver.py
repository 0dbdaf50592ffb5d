"""A fast webhook receiver for the delivery benchmark: answers 200 at once and appends
``<event id> <monotonic time>`` to ``RECEIVER_LOG`` (CLOCK_MONOTONIC is one clock for every
process on the machine, so the bench compares it with its own ingest times)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

_ID = re.compile(rb'"id":\s*"(evt_[^"]+)"')
_log = open(os.environ["RECEIVER_LOG"], "a", buffering=1)  # line-buffered, open for the life of the worker
_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    if match := _ID.search(b"".join(chunks)):
        _log.write(f"{match.group(1).decode()} {time.monotonic()}\n")
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})
