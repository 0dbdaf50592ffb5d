"""API shapes of endpoints (snake_case on the wire).

``event_types`` is a plain ``list[str]`` here: its rules are checked by the service so every
violation answers the same ``invalid-event-types`` problem, not a mix of 400s and 422s.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from delivery.breaker import State
from tenants.schemas import GraceSeconds

Description = Annotated[str, msgspec.Meta(max_length=1000)]
# At least one request per 1,000 s (the limiter itself takes rates down to gateway.limiter.MIN_PER_SECOND).
RatePerSecond = Annotated[float, msgspec.Meta(ge=0.001, le=10_000)]


class EndpointCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    description: Description = ""
    event_types: list[str] = msgspec.field(default_factory=lambda: ["*"])
    rate_limit_per_second: RatePerSecond | None = None
    enabled: bool = True


class EndpointUpdate(msgspec.Struct, forbid_unknown_fields=True):
    url: str | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    event_types: list[str] | msgspec.UnsetType = msgspec.UNSET
    rate_limit_per_second: RatePerSecond | None | msgspec.UnsetType = msgspec.UNSET  # null: no limit
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class SecretRotate(msgspec.Struct, forbid_unknown_fields=True):
    grace_seconds: GraceSeconds | None = None  # None: the operator's default grace period


class BreakerOut(msgspec.Struct):
    state: State | Literal["unknown"]  # unknown: the shared breaker store (Redis) is unreachable
    consecutive_failures: int | None
    retry_at: datetime | None  # open: when the next probe may go


class EndpointOut(msgspec.Struct, omit_defaults=True):
    id: uuid.UUID
    url: str
    description: str
    event_types: list[str]
    rate_limit_per_second: float | None
    enabled: bool
    created_at: datetime
    breaker: BreakerOut
    secret: str | None = None  # only in the answer to create: the generated signing secret
