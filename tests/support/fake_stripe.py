"""Stripe's Events API as a local HTTP server (Stripe's own API cannot be reached from tests):
``GET /v1/events`` with ``created[gte|lte]``, ``limit`` and ``starting_after``, bearer-key auth,
and Stripe's list and error bodies, newest first, as api.stripe.com answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.receiver import Received, head


class FakeStripe:
    def __init__(self, api_key: str, events: list[dict[str, Any]]) -> None:
        self.api_key = api_key
        self.events = sorted(events, key=lambda event: (event["created"], event["id"]), reverse=True)
        self.requests: list[Received] = []

    async def __call__(self, request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(request)
        status, body = self._answer(request)
        payload = json.dumps(body).encode()
        writer.write(head(status, {"content-type": "application/json", "content-length": str(len(payload))}) + payload)
        await writer.drain()

    def _answer(self, request: Received) -> tuple[int, dict[str, Any]]:
        target = urlsplit(request.target)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("authorization", "")[-4:]
            return 401, {"error": {"type": "invalid_request_error", "message": f"Invalid API Key provided: rk_****{given}"}}
        if request.method != "GET" or target.path != "/v1/events":
            return 404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized request URL ({target.path})"}}
        query = {name: values[-1] for name, values in parse_qs(target.query).items()}
        events = [
            event for event in self.events
            if int(query.get("created[gte]", 0)) <= event["created"] <= int(query.get("created[lte]", 2**62))
        ]
        if after := query.get("starting_after"):
            events = events[[event["id"] for event in events].index(after) + 1 :]
        limit = int(query.get("limit", 10))
        return 200, {"object": "list", "url": "/v1/events", "has_more": len(events) > limit, "data": events[:limit]}
