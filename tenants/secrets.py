"""Rotation of signing secrets, shared by sources (verify) and endpoints (sign)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from tenants.crypto import SecretBox
from tenants.models import SecretColumns

S = TypeVar("S", bound=SecretColumns)


def add_secret(rows: list[S], new: S, *, grace_seconds: int, now: datetime) -> None:
    """Append ``new``; the active ones before it keep working for ``grace_seconds`` more at most."""
    until = now + timedelta(seconds=max(0, grace_seconds))
    for row in rows:
        if row.active_at(now) and (row.expires_at is None or row.expires_at > until):
            row.expires_at = until
    rows.append(new)


def active_rows(rows: Sequence[S], now: datetime) -> list[S]:
    """Active secrets, newest first (the one most likely to match is tried first)."""
    return sorted((row for row in rows if row.active_at(now)), key=_created, reverse=True)


def active_plaintexts(box: SecretBox, rows: Sequence[SecretColumns], now: datetime) -> list[str]:
    return [box.decrypt(row.ciphertext) for row in active_rows(rows, now)]


def _created(row: SecretColumns) -> datetime:
    return row.created_at
