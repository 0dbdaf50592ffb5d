"""Prometheus metrics, defined once; every name is prefixed ``hookgate_`` and every label bounded."""

from __future__ import annotations

from prometheus_client import Counter

ADMISSION = Counter(
    "hookgate_admission_total",
    "Ingest admission decisions by priority and outcome (admitted, refused, failed_open, failed_closed).",
    ["priority", "outcome"],
)
