"""Stored answers to management-API POSTs that carried an ``Idempotency-Key``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import Base, UTCDateTime, utcnow


class IdempotentRequest(Base):
    __tablename__ = "idempotent_requests"

    # Who sent it (``operator`` or ``key:<api key id>``): keys are scoped to the live credential that sent them.
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 of method, path and body: the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    # None while the first request is still being answered.
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    content_type: Mapped[str | None] = mapped_column(String(255), default=None)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)  # encrypted (SecretBox)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
