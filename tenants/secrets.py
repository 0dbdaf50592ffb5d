"""Rotation of signing secrets, shared by sources (verify) and endpoints (sign)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from gateway.database import new_id, utcnow
from gateway.problems import Problem
from tenants.crypto import SecretBox
from tenants.models import SecretColumns
from tenants.schemas import SecretOut

S = TypeVar("S", bound=SecretColumns)


# Active secrets one source or endpoint may have at once. Each is tried on every ingest with a bad
# signature, and joined to every delivery claimed and signed with: a thousand, one tenant's, made
# the gateway's event loop and the shared claim statement slow for every tenant.
MAX_ACTIVE_SECRETS = 5


def rotate(box: SecretBox, rows: list[S], row_type: type[S], secret: str, *, grace_seconds: int) -> SecretOut:
    """Add ``secret`` (encrypted); the active ones before it keep working for ``grace_seconds`` more at most."""
    now = utcnow()
    active = sum(1 for row in rows if row.active_at(now))
    if grace_seconds > 0 and active >= MAX_ACTIVE_SECRETS:
        raise Problem(
            409,
            "too-many-secrets",
            f"{active} secrets are active, the most there may be: wait until older ones expire, or rotate "
            "with a grace period of 0 to expire them now",
        )
    until = now + timedelta(seconds=max(0, grace_seconds))
    for row in rows:
        if row.active_at(now) and (row.expires_at is None or row.expires_at > until):
            row.expires_at = until
    new = row_type(id=new_id(), ciphertext=box.encrypt(secret), created_at=now)
    rows.append(new)
    return SecretOut(id=new.id, created_at=now, expires_at=None, secret=secret)


def active_rows(rows: Sequence[S], now: datetime) -> list[S]:
    """Active secrets, newest first (the one most likely to match is tried first)."""
    return sorted((row for row in rows if row.active_at(now)), key=_created, reverse=True)


def revealed(box: SecretBox, rows: Sequence[SecretColumns]) -> list[SecretOut]:
    """The active secrets in plaintext, newest first, for a tenant who lost them."""
    return [
        SecretOut(id=row.id, created_at=row.created_at, expires_at=row.expires_at, secret=box.decrypt(row.ciphertext))
        for row in active_rows(rows, utcnow())
    ]


def active_plaintexts(box: SecretBox, rows: Sequence[SecretColumns], now: datetime) -> list[str]:
    return [box.decrypt(row.ciphertext) for row in active_rows(rows, now)]


def _created(row: SecretColumns) -> datetime:
    return row.created_at
