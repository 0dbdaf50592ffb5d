"""The DIY baseline the seed articles start from: FastAPI, ``stripe.Webhook.construct_event``,
then a select-then-insert per request (one transaction each) on Postgres.

It is what a team would run without a gateway, written the way the tutorials write it, so the
benchmark compares Hookgate against it on the same machine, load and events. Configured by
``DIY_DATABASE_URL`` (asyncpg DSN) and ``DIY_STRIPE_SECRET``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import stripe
from fastapi import FastAPI, HTTPException, Request

_SECRET = os.environ.get("DIY_STRIPE_SECRET", "")
_pool: asyncpg.Pool | None = None


@asynccontextmanager
async def _lifespan(_: FastAPI) -> Any:
    global _pool
    _pool = await asyncpg.create_pool(os.environ["DIY_DATABASE_URL"], min_size=2, max_size=10)
    yield
    await _pool.close()


app = FastAPI(lifespan=_lifespan)


@app.post("/webhook")
async def webhook(request: Request) -> dict[str, Any]:
    payload = await request.body()
    try:
        event = stripe.Webhook.construct_event(payload, request.headers.get("stripe-signature", ""), _SECRET)
    except (ValueError, stripe.SignatureVerificationError) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    assert _pool is not None
    async with _pool.acquire() as connection, connection.transaction():
        if await connection.fetchval("SELECT 1 FROM diy_events WHERE id = $1", event["id"]):
            return {"id": event["id"], "duplicate": True}
        await connection.execute(
            "INSERT INTO diy_events (id, type, payload) VALUES ($1, $2, $3)", event["id"], event["type"], payload.decode()
        )
    return {"id": event["id"], "duplicate": False}


SCHEMA = """CREATE TABLE IF NOT EXISTS diy_events (
    id text PRIMARY KEY, type text NOT NULL, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"""
