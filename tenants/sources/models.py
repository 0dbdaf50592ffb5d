"""Sources: where a tenant's events come from (a provider, an ingest token, its secrets)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gateway.database import Base, UTCDateTime, new_id, utcnow
from tenants.models import SecretColumns


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(32))
    ingest_token: Mapped[str] = mapped_column(String(64), unique=True)
    priorities: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)
    # Stripe sources: a restricted API key (encrypted) that lets a backfill list missed events.
    stripe_api_key: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    secrets: Mapped[list[SourceSecret]] = relationship(
        order_by="SourceSecret.created_at", lazy="selectin", cascade="all, delete-orphan"
    )


class SourceSecret(SecretColumns, Base):
    __tablename__ = "source_secrets"

    source_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
