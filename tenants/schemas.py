"""API shapes of tenants (operator API), and the secret shapes sources and endpoints share."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from gateway.events.priority import Priority


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class LimitIn(msgspec.Struct, forbid_unknown_fields=True):
    rate_per_second: Annotated[float, msgspec.Meta(ge=0.001, le=1_000_000)] | msgspec.UnsetType = msgspec.UNSET
    burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | msgspec.UnsetType = msgspec.UNSET


class LimitsUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Operator's partial update: only the priorities (and fields) given change."""

    limits: dict[Priority, LimitIn | None] | msgspec.UnsetType = msgspec.UNSET
    delivery_concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None | msgspec.UnsetType = msgspec.UNSET


class LimitOut(msgspec.Struct):
    rate_per_second: float
    burst: int
    source: Literal["default", "tenant"]


class TenantOut(msgspec.Struct, omit_defaults=True):
    id: uuid.UUID
    name: str
    created_at: datetime
    limits: dict[str, LimitOut]
    delivery_concurrency: int
    api_key: str | None = None  # only in the answer to create: shown once, stored hashed


GraceSeconds = Annotated[int, msgspec.Meta(ge=0, le=30 * 86_400)]


class SecretInfo(msgspec.Struct):
    id: uuid.UUID
    created_at: datetime
    expires_at: datetime | None


class SecretOut(SecretInfo):
    secret: str
