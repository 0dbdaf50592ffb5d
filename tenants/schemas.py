"""API shapes of tenants (operator API), and the secret shapes sources and endpoints share."""

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


GraceSeconds = Annotated[int, msgspec.Meta(ge=0, le=30 * 86_400)]


class SecretInfo(msgspec.Struct):
    id: uuid.UUID
    created_at: datetime
    expires_at: datetime | None


class SecretOut(SecretInfo):
    secret: str
