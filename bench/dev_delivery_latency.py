"""End-to-end latency in embedded mode: ingest 2xx → the event at a local receiver.

Starts ``hookgate dev`` on a free port, registers a local endpoint, posts N Stripe-signed events
one at a time and prints p50/p90/max; writes ``bench/results/dev_delivery_latency.json``.
Run: ``.venv/bin/python -m bench.dev_delivery_latency [N]`` from the repository root.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.processes import HOOKGATE, Process
from tests.support.receiver import Script, Server, wait_until
from tests.support.services import free_port
from tests.support.stripe_events import signed_stripe, stripe_event

RESULTS = Path(__file__).with_name("results")


async def measure(count: int) -> dict[str, float]:
    tmp, port = Path(tempfile.mkdtemp()), free_port()
    base = f"http://127.0.0.1:{port}"
    async with Server(Script()) as receiver:
        with Process([*HOOKGATE, "dev", "--port", str(port), "--data-dir", str(tmp / "data")], tmp / "dev.log") as dev:
            await asyncio.to_thread(dev.wait_http, f"{base}/healthz")
            out = dev.output()
            key = re.search(r"tenant key:\s+(\S+)", out)[1]  # type: ignore[index]
            ingest_url = re.search(r"ingest URL:\s+(\S+)", out)[1]  # type: ignore[index]
            secret = re.search(r"whsec_\): (\S+)", out)[1]  # type: ignore[index]
            async with httpx.AsyncClient(base_url=base) as http:
                await http.post("/api/v1/endpoints", json={"url": receiver.url}, headers={"authorization": f"Bearer {key}"})
                latencies = []
                for _ in range(count):
                    body, headers = signed_stripe(stripe_event(), secret)
                    seen = len(receiver.requests)
                    (await http.post(ingest_url, content=body, headers=headers)).raise_for_status()
                    acknowledged = time.monotonic()
                    await wait_until(lambda seen=seen: len(receiver.requests) > seen, timeout=5, what="delivery")
                    latencies.append((receiver.requests[-1].at - acknowledged) * 1000)
    latencies.sort()
    return {
        "count": count,
        "p50_ms": statistics.median(latencies),
        "p90_ms": latencies[int(0.9 * (count - 1))],
        "max_ms": latencies[-1],
    }


if __name__ == "__main__":
    result = asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 50))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dev_delivery_latency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
