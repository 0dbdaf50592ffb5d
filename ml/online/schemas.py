"""API shapes of anomalies and of a tenant's detection settings."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec

from ml.online.models import Anomaly


class AnomalyOut(msgspec.Struct):
    id: uuid.UUID
    kind: str
    detector: str
    severity: str
    score: float
    status: Literal["open", "closed"]
    explanation: list[str]
    features: dict[str, float]
    started_at: datetime
    last_seen_at: datetime
    ended_at: datetime | None
    windows: int
    acknowledged_at: datetime | None

    @classmethod
    def of(cls, row: Anomaly) -> AnomalyOut:
        return cls(
            id=row.id,
            kind=row.kind,
            detector=row.detector,
            severity=row.severity,
            score=row.score,
            status="open" if row.ended_at is None else "closed",
            explanation=row.explanation,
            features=row.features,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
            ended_at=row.ended_at,
            windows=row.windows,
            acknowledged_at=row.acknowledged_at,
        )


class DetectionOut(msgspec.Struct):
    """How this tenant's stream is watched: rules only until the model has enough history."""

    mode: Literal["rules_only", "rules_and_model"]
    reason: str
    windows_seen: int
    min_windows: int
    model_trained_at: datetime | None
    window_seconds: int
    thresholds: dict[str, float]
    overrides: dict[str, float]


class ThresholdsUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Per-threshold overrides; ``null`` restores a threshold's default."""

    thresholds: dict[str, float | None]
