"""Tenants and their API keys; the columns every rotated signing secret shares."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, ForeignKey, Integer, LargeBinary, String, Uuid, or_
from sqlalchemy.ext.hybrid import hybrid_method
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import Base, UTCDateTime, new_id, utcnow


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    # Operator overrides of the admission limits, per priority (see tenants/limits.py).
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Operator override of HOOKGATE_TENANT_DELIVERY_CONCURRENCY.
    delivery_concurrency: Mapped[int | None] = mapped_column(Integer, default=None)
    # The tenant's own anomaly-rule thresholds (ml/rules.py Thresholds); unset ones use defaults.
    anomaly_thresholds: Mapped[dict[str, float] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """A tenant's API key: only a lookup prefix and a SHA-256 digest are kept."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="default")
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class SecretColumns:
    """A signing secret, encrypted at rest; rotation keeps several active until they expire."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    @hybrid_method
    def active_at(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now

    @active_at.inplace.expression
    @classmethod
    def _active_at_expression(cls, now: Any) -> ColumnElement[bool]:
        """The same test in SQL (the delivery worker's jobs query reads only the active secrets)."""
        return or_(cls.expires_at.is_(None), cls.expires_at > now)
