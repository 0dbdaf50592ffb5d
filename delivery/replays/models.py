"""Replay jobs: bulk replays, dead-letter redrives and Stripe backfills, run by workers in batches.

A job's progress (its cursor and counts) is committed in the same transaction as the work of
each batch, so a worker that dies mid-job loses nothing and repeats nothing: the next batch,
on any worker, starts where the last committed one ended.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import Base, UTCDateTime, new_id, utcnow

REPLAY, REDRIVE, BACKFILL = "replay", "redrive", "backfill"
QUEUED, RUNNING, COMPLETED, CANCELLED, FAILED = "queued", "running", "completed", "cancelled", "failed"
ACTIVE = (QUEUED, RUNNING)


class ReplayJob(Base):
    __tablename__ = "replay_jobs"
    __table_args__ = (
        Index("ix_replay_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index(
            "ix_replay_jobs_active",
            "updated_at",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    # The filters, as the request gave them (the window is on events' received_at for a replay,
    # on deliveries' created_at for a redrive, on Stripe's `created` for a backfill).
    since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    types: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    source_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sources.id"), default=None)
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("endpoints.id"), default=None)
    only_failed: Mapped[bool] = mapped_column(Boolean, default=False)
    # A redrive of chosen dead letters (the dashboard's "redrive selected"), as id strings.
    delivery_ids: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # Progress: None while unknown (a backfill learns its size only by listing).
    total: Mapped[int | None] = mapped_column(Integer, default=None)
    done: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    # Where the next batch starts: the last row handled (time and id), or Stripe's last event id.
    cursor_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    cursor_id: Mapped[str | None] = mapped_column(String(255), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
