"""API shapes of tenants (operator API)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class TenantOut(msgspec.Struct, omit_defaults=True):
    id: uuid.UUID
    name: str
    created_at: datetime
    api_key: str | None = None  # only in the answer to create: shown once, stored hashed
