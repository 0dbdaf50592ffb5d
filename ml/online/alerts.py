"""Anomalies as Hookgate's own events: ``anomaly.detected`` when one opens, ``anomaly.resolved``
when it closes, delivered to the tenant's endpoints that subscribe to them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from delivery import operational
from ml.online.models import Anomaly

DETECTED, RESOLVED = "anomaly.detected", "anomaly.resolved"


def payload(anomaly: Anomaly) -> dict[str, Any]:
    return {
        "anomaly_id": str(anomaly.id),
        "kind": anomaly.kind,
        "detector": anomaly.detector,
        "severity": anomaly.severity,
        "score": round(anomaly.score, 4),
        "window_start": anomaly.started_at.isoformat(),
        "last_seen": anomaly.last_seen_at.isoformat(),
        "ended_at": anomaly.ended_at.isoformat() if anomaly.ended_at else None,
        "explanation": anomaly.explanation,
    }


async def detected(session: AsyncSession, anomaly: Anomaly) -> None:
    await operational.emit(session, anomaly.tenant_id, DETECTED, payload(anomaly), exclude=None)


async def resolved(session: AsyncSession, anomaly: Anomaly) -> None:
    await operational.emit(session, anomaly.tenant_id, RESOLVED, payload(anomaly), exclude=None)
