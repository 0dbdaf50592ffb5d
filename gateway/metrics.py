"""Prometheus metrics, defined once; every name is prefixed ``hookgate_`` and every label bounded
(tenant and endpoint ids, provider, priority, outcome, status class — never URLs or event ids).

The gateway runs several Granian worker processes, so it uses prometheus_client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set by ``hookgate serve``); gauges say how to combine the
processes' values. HTTP request metrics per route template come from Litestar's Prometheus
middleware (``hookgate_requests_total``, ``hookgate_request_duration_seconds``).
"""

from __future__ import annotations

import functools
import os
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics import MetricWrapperBase

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)

INGEST = Counter(
    "hookgate_ingest_requests_total",
    "Ingest requests by outcome: accepted, duplicate, bad_signature, rate_limited, too_large, "
    "unknown_source, invalid_payload, error.",
    ["tenant", "provider", "outcome"],
)
INGEST_LATENCY = Histogram(
    "hookgate_ingest_duration_seconds", "Time from request to answer on the ingest route.", ["outcome"], buckets=_LATENCY
)
INGEST_BATCH_ROWS = Histogram(
    "hookgate_ingest_commit_batch_rows",
    "Events committed together by one ingest group commit (grows with the load).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ATTEMPT_BATCH_ROWS = Histogram(
    "hookgate_delivery_outcome_batch_rows",
    "Attempt outcomes committed together by one delivery group commit (grows with the load).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ADMISSION = Counter(
    "hookgate_admission_total",
    "Ingest admission decisions by priority and outcome (admitted, refused, failed_open, failed_closed).",
    ["priority", "outcome"],
)
ATTEMPTS = Counter(
    "hookgate_delivery_attempts_total",
    "Delivery attempts by outcome (success, failure) and status class (2xx..5xx, or error: no answer).",
    ["tenant", "outcome", "status_class"],
)
ATTEMPT_LATENCY = Histogram(
    "hookgate_delivery_attempt_duration_seconds", "Duration of one delivery attempt.", ["status_class"], buckets=_LATENCY
)
DELIVERIES = Counter(
    "hookgate_deliveries_total", "Deliveries finished, by outcome (succeeded, dead).", ["tenant", "outcome"]
)
DELIVERY_LAG = Histogram(
    "hookgate_delivery_lag_seconds",
    "End to end: from Hookgate receiving the event to the endpoint acknowledging it.",
    ["priority"],
    buckets=_LAG,
)
PENDING = Gauge(
    "hookgate_pending_deliveries", "Deliveries waiting (pending or retrying), by priority.", ["priority"], multiprocess_mode="max"
)
OLDEST_PENDING = Gauge(
    "hookgate_oldest_pending_age_seconds",
    "Age of the oldest due delivery not yet sent, by priority (the backlog's age).",
    ["priority"],
    multiprocess_mode="max",
)
DEAD = Gauge("hookgate_dead_deliveries", "Dead letters kept (dead deliveries not purged).", multiprocess_mode="max")
BACKLOG_READ = Gauge(
    "hookgate_backlog_read_timestamp_seconds",
    "When the backlog gauges were last read from the database (unix time): they hold their last values while it is unreachable.",
    multiprocess_mode="max",
)
CIRCUIT_OPEN = Gauge(
    "hookgate_circuit_open",
    "1 for each endpoint whose circuit is open or half-open (endpoints with waiting deliveries).",
    ["tenant", "endpoint"],
    multiprocess_mode="max",
)
SWEEPER = Counter(
    "hookgate_sweeper_recoveries_total",
    "Work the sweeper found stranded and recovered (stranded_events: deliveries it created for "
    "events stored but never fanned out, i.e. the doorbell was lost).",
    ["kind"],
)
ANOMALIES = Counter(
    "hookgate_anomalies_total",
    "Anomalies opened, by detector and severity.",
    ["detector", "severity"],
)
ANOMALY_WINDOW_SCORED = Gauge(
    "hookgate_anomaly_window_scored_timestamp_seconds",
    "End (unix time) of the latest window the anomaly monitor scored: it falls behind when detection stalls.",
    multiprocess_mode="max",
)


@functools.cache
def labelled(metric: _Metric, *values: str) -> _Metric:
    """``metric.labels(*values)`` (in the metric's label order), looked up once per label set.

    ``labels`` validates and takes a lock on every call, ~3 µs: on the per-request and per-attempt
    paths that was ~2 % of ingest's CPU. Only for metrics whose children are never removed (the
    cache would keep a removed one): not ``CIRCUIT_OPEN``, which the gauge refresh clears."""
    return metric.labels(*values)


def exposition() -> bytes:
    """The text format of every metric: summed over all processes in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
