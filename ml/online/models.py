"""What the online detector keeps: each tenant's closed feature windows (its history), its
trained model, the anomalies it raised, and which windows have been scored."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, PrimaryKeyConstraint, String, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import Base, UTCDateTime, new_id, utcnow
from ml.features import Window

_KEYS = ("tenant", "start", "seconds")
_FEATURES = frozenset(field.name for field in fields(Window)) - set(_KEYS)


class FeatureWindowRow(Base):
    __tablename__ = "feature_windows"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "start"), Index("ix_feature_windows_start", "start"))

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    seconds: Mapped[int] = mapped_column(Integer)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The start of the tenant's latest window with events: a tenant keeps getting (empty)
    # windows, so "events stopped" is seen, until it has been silent for the history span.
    last_active: Mapped[datetime] = mapped_column(UTCDateTime)

    def window(self) -> Window:
        """The stored window; a feature this release does not know (stored by a newer one, before a
        rollback) is left out, as a missing one reads as its default."""
        known = {key: value for key, value in self.features.items() if key in _FEATURES}
        return Window(tenant=str(self.tenant_id), start=self.start, seconds=self.seconds, **known)

    @staticmethod
    def features_of(window: Window) -> dict[str, Any]:
        return {key: value for key, value in window.as_dict().items() if key not in _KEYS}


class TenantModelRow(Base):
    """A tenant's fitted isolation forest (``ml/forest.py`` ``TenantModel.dumps``)."""

    __tablename__ = "anomaly_models"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    windows: Mapped[int] = mapped_column(Integer)
    blob: Mapped[bytes] = mapped_column(LargeBinary)


class WindowRun(Base):
    """One row per scored window start: the claim that makes exactly one worker score it."""

    __tablename__ = "anomaly_runs"

    window_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    tenants: Mapped[int] = mapped_column(Integer, default=0)


class Anomaly(Base):
    """One incident: opened by a finding, updated while findings of its kind continue, closed
    after quiet windows (``ml/incidents.py``)."""

    __tablename__ = "anomalies"
    __table_args__ = (
        Index("ix_anomalies_tenant_started", "tenant_id", "started_at", "id"),
        Index(
            "uq_anomalies_open",
            "tenant_id",
            "kind",
            unique=True,
            postgresql_where=text("ended_at IS NULL"),
            sqlite_where=text("ended_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    detector: Mapped[str] = mapped_column(String(100))  # "card_testing+isolation_forest" when both saw it
    severity: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    explanation: Mapped[list[str]] = mapped_column(JSON)
    features: Mapped[dict[str, float]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)  # first window with a finding
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)  # latest window with a finding
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    windows: Mapped[int] = mapped_column(Integer, default=1)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
