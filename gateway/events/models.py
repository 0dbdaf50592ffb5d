"""The durable core: the event log and delivery state, which is data, not queue state.

Every verified event is stored once per (tenant, source, provider event id); each (event,
endpoint) pair has one delivery row, and every HTTP try appends one attempt row.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import Base, UTCDateTime, new_id, utcnow


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "source_id", "external_id"),
        Index("ix_events_tenant_received", "tenant_id", "received_at", "id"),
        # Feature windows aggregate every tenant's events of one window (ml/online/windows.py).
        Index("ix_events_received", "received_at"),
        # Silent-lapse detection: a customer's earlier payment failures.
        Index(
            "ix_events_tenant_customer",
            "tenant_id",
            "customer",
            postgresql_where=text("customer IS NOT NULL"),
            sqlite_where=text("customer IS NOT NULL"),
        ),
        Index(
            "ix_events_unfanned",
            "received_at",
            postgresql_where=text("fanned_out_at IS NULL"),
            sqlite_where=text("fanned_out_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # NULL for operational events that Hookgate itself emits (delivery.dead, …).
    source_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sources.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(255))
    priority: Mapped[str] = mapped_column(String(16))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    provider_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Billing facts of Stripe events (gateway/events/facts.py), for anomaly feature windows.
    customer: Mapped[str | None] = mapped_column(String(255), default=None)
    card_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    amount: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # W3C traceparent of the ingest request: delivery attempts join the event's trace.
    trace_context: Mapped[str | None] = mapped_column(String(64), default=None)
    # Set once deliveries exist for every matching endpoint; the sweeper fans out the rest.
    fanned_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

PENDING, SUCCEEDED, FAILED, DEAD = "pending", "succeeded", "failed", "dead"
OPEN_STATUSES = (PENDING, FAILED)


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        # Fan-out is idempotent: one original delivery per (event, endpoint); replays add more.
        Index(
            "uq_deliveries_original",
            "event_id",
            "endpoint_id",
            unique=True,
            postgresql_where=text("NOT is_replay"),
            sqlite_where=text("NOT is_replay"),
        ),
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'failed')"),
            sqlite_where=text("status IN ('pending', 'failed')"),
        ),
        Index("ix_deliveries_tenant_created", "tenant_id", "created_at", "id"),
        # Open deliveries by tenant and priority: the fair claim's per-tenant scans (delivery/engine.py).
        Index(
            "ix_deliveries_open",
            "tenant_id",
            "priority",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'failed')"),
            sqlite_where=text("status IN ('pending', 'failed')"),
        ),
        # A replay job's deliveries still under way: what paces the job (delivery/replays/steps.py).
        Index(
            "ix_deliveries_replay_job",
            "replay_job_id",
            "status",
            postgresql_where=text("replay_job_id IS NOT NULL"),
            sqlite_where=text("replay_job_id IS NOT NULL"),
        ),
        # The dead-letter queue: listed per tenant, counted for the dead-letters gauge.
        Index(
            "ix_deliveries_dead",
            "tenant_id",
            "created_at",
            postgresql_where=text("status = 'dead'"),
            sqlite_where=text("status = 'dead'"),
        ),
        # Leased rows per tenant: what the fair claim counts against each tenant's concurrency cap.
        Index(
            "ix_deliveries_leased",
            "tenant_id",
            "locked_until",
            postgresql_where=text("locked_until IS NOT NULL"),
            sqlite_where=text("locked_until IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    priority: Mapped[str] = mapped_column(String(16))
    is_replay: Mapped[bool] = mapped_column(Boolean, default=False)
    # The bulk replay or redrive (delivery/replays) that created or revived this delivery.
    replay_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts made before the last redrive: the retry schedule restarts from there.
    retry_offset: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    # A worker holds a delivery until this time; after it the sweeper may hand it out again.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_started", "started_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    response_excerpt: Mapped[str | None] = mapped_column(Text, default=None)
    trace_id: Mapped[str | None] = mapped_column(String(32), default=None)
