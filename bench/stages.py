"""Where a delivery's end-to-end latency went: each acknowledged event's stages, from the database's
own timestamps, for the benchmarks that measure ingest 2xx → arrival at a receiver."""

from __future__ import annotations

import statistics
import time
from typing import Any

from gateway.database import create_engine

# Each acknowledged event's way through the system, from the database: stored (the gateway's
# receipt time), fanned out (its delivery row made, by a ring's pass or the sweeper), first attempt
# started. Wall-clock times, which ``stages`` puts on the monotonic clock of the ack and arrival.
_TIMELINE = """
SELECT e.external_id, e.received_at, e.fanned_out_at, min(a.started_at) AS attempted
FROM events e JOIN deliveries d ON d.event_id = e.id JOIN attempts a ON a.delivery_id = d.id
WHERE e.external_id = ANY($1::text[]) GROUP BY e.external_id, e.received_at, e.fanned_out_at
"""
_STAGES = ("stored_to_ack", "ack_to_fanned_out", "fanned_out_to_attempt", "attempt_to_arrival")


async def stages(database_url: str, acked: dict[str, float], arrivals: dict[str, float]) -> dict[str, Any]:
    """Where the end-to-end latency went: each stage's percentiles, and the slowest events' stages.

    A stall shows which side it was on: a late ring or pass (ack → fanned out), a late claim
    (fanned out → attempt) or the HTTP request (attempt → arrival).
    """
    to_monotonic = time.time() - time.monotonic()  # one system clock: wall minus this is monotonic
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            rows = await raw.fetch(_TIMELINE, list(acked))
    finally:
        await engine.dispose()
    timelines = {}
    for row in rows:
        stored, fanned, attempted = (t.timestamp() - to_monotonic for t in (row["received_at"], row["fanned_out_at"], row["attempted"]))
        ack, arrival = acked[row["external_id"]], arrivals[row["external_id"]]
        timelines[row["external_id"]] = dict(zip(_STAGES, (ack - stored, fanned - ack, attempted - fanned, arrival - attempted), strict=True))
    slowest = sorted(acked, key=lambda event_id: arrivals[event_id] - acked[event_id])[-5:]
    return {
        **{stage: percentiles([t[stage] for t in timelines.values()]) for stage in _STAGES},
        "slowest_ms": [
            {"end_to_end": round(1000 * (arrivals[i] - acked[i]), 1), **{k: round(1000 * v, 1) for k, v in timelines[i].items()}}
            for i in reversed(slowest) if i in timelines
        ],
    }


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50_ms": round(statistics.median(values) * 1000, 1), "p90_ms": round(pick(0.9) * 1000, 1),
            "p99_ms": round(pick(0.99) * 1000, 1), "max_ms": round(values[-1] * 1000, 1)}
