"""Per-tenant, per-minute counts of what ingest turned away without storing: provider retries of
stored events (dedupe hits) and requests whose signature failed. Anomaly windows read them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Insert, Integer, PrimaryKeyConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import Base, UTCDateTime, dialect_insert

DUPLICATES, BAD_SIGNATURES = "duplicates", "bad_signatures"


class IngestTally(Base):
    __tablename__ = "ingest_tallies"
    # Anomaly windows read every tenant's rows of a minute, and retention deletes by minute.
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "minute"), Index("ix_ingest_tallies_minute", "minute"))

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    minute: Mapped[datetime] = mapped_column(UTCDateTime)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    bad_signatures: Mapped[int] = mapped_column(Integer, default=0)


def bump(dialect_name: str, tenant_id: uuid.UUID, field: str, at: datetime, amount: int = 1) -> Insert:
    """Add ``amount`` to ``field`` in the tenant's row for the minute of ``at`` (an upsert)."""
    minute = at.replace(second=0, microsecond=0)
    insert = dialect_insert(dialect_name)(IngestTally).values(
        {"tenant_id": tenant_id, "minute": minute, DUPLICATES: 0, BAD_SIGNATURES: 0, field: amount}
    )
    return insert.on_conflict_do_update(
        index_elements=["tenant_id", "minute"], set_={field: getattr(IngestTally, field) + amount}
    )
