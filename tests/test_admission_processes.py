"""Admission limits shared by real gateway processes: two ``hookgate serve`` processes on one
Redis admit no more than the limit plus the burst between them, and the budget refills on
schedule (GCRA: one event per ``1 / rate`` seconds)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OPERATOR_KEY
from tests.support.processes import serve
from tests.support.services import free_port
from tests.support.stripe_events import signed_stripe, stripe_event

pytestmark = pytest.mark.slow
RATE, BURST, SENT = 0.5, 10, 60


async def _post(http: httpx.AsyncClient, url: str, secret: str) -> httpx.Response:
    body, headers = signed_stripe(stripe_event("product_created"), secret)
    return await http.post(url, content=body, headers=headers)


async def test_two_gateway_processes_share_one_limit_that_refills_on_schedule(production_env: dict[str, str], tmp_path: Path) -> None:
    ports = [production_env["PORT"], str(free_port())]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    with serve(production_env, tmp_path, ports[0]) as one, serve(production_env, tmp_path, ports[1]) as two:
        await asyncio.gather(*(asyncio.to_thread(p.wait_http, f"{base}/healthz") for p, base in zip((one, two), bases, strict=True)))
        async with httpx.AsyncClient(timeout=10) as http:
            operator = {"authorization": f"Bearer {OPERATOR_KEY}"}
            tenant = (await http.post(f"{bases[0]}/api/v1/tenants", json={"name": "Shared"}, headers=operator)).json()
            patched = await http.patch(
                f"{bases[1]}/api/v1/tenants/{tenant['id']}", json={"limits": {"low": {"rate_per_second": RATE, "burst": BURST}}}, headers=operator
            )
            assert patched.json()["limits"]["low"] == {"rate_per_second": RATE, "burst": BURST, "source": "tenant"}
            auth = {"authorization": f"Bearer {tenant['api_key']}"}
            source: dict[str, Any] = (await http.post(f"{bases[0]}/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers=auth)).json()
            path = "/ingest/" + source["ingest_url"].rsplit("/", 1)[1]

            started = time.monotonic()
            answers = await asyncio.gather(*(_post(http, bases[i % 2] + path, source["secret"]) for i in range(SENT)))
            elapsed = time.monotonic() - started
            admitted = [answer for answer in answers if answer.status_code == 200]
            refused = [answer for answer in answers if answer.status_code == 429]
            assert len(admitted) + len(refused) == SENT, {a.status_code for a in answers}
            # Two separate budgets would admit 2 x BURST; one shared budget admits BURST plus the refill.
            assert BURST <= len(admitted) <= BURST + math.floor(elapsed * RATE) + 1, (len(admitted), elapsed)
            assert all(1 <= int(answer.headers["retry-after"]) <= math.ceil(1 / RATE) for answer in refused)

            # The budget refills at the rate: the first refusal now says when; then one gets in (through
            # the other process) and the next waits again.
            probes = [await _post(http, bases[0] + path, source["secret"])]
            while probes[-1].status_code == 200:  # a slot may have refilled since the flood
                probes.append(await _post(http, bases[0] + path, source["secret"]))
            await asyncio.sleep(int(probes[-1].headers["retry-after"]))
            refilled = await _post(http, bases[1] + path, source["secret"])
            after = await _post(http, bases[0] + path, source["secret"])
            assert (refilled.status_code, after.status_code) == (200, 429)

            usage = (await http.get(f"{bases[1]}/api/v1/usage", headers=auth)).json()
            windows = (usage["current"], usage["previous"])
            assert sum(w["admitted"]["low"] for w in windows) == len(admitted) + len(probes) - 1 + 1
            assert sum(w["refused"]["low"] for w in windows) == len(refused) + 1 + 1
