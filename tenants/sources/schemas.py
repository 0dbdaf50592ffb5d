"""API shapes of sources (snake_case on the wire)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from gateway.events.priority import Priority
from tenants.schemas import GraceSeconds, SecretInfo

Provider = Literal["stripe", "standard_webhooks", "github", "shopify", "hmac_sha256"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
SecretText = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# A restricted (rk_) or secret (sk_) Stripe key; restricted keys with "Events: read" are enough.
StripeApiKey = Annotated[str, msgspec.Meta(pattern=r"^(rk|sk)_(test|live)_[0-9A-Za-z]{8,247}$")]


class SourceCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    provider: Provider
    secret: SecretText | None = None


class SourceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    priorities: dict[str, Priority] | None | msgspec.UnsetType = msgspec.UNSET
    # Write-only: stored encrypted, never returned (``has_stripe_api_key`` says whether one is set).
    stripe_api_key: StripeApiKey | None | msgspec.UnsetType = msgspec.UNSET


class SecretCreate(msgspec.Struct, forbid_unknown_fields=True):
    secret: SecretText | None = None
    expire_previous_after_seconds: GraceSeconds | None = None


class SourceOut(msgspec.Struct, omit_defaults=True):
    id: uuid.UUID
    name: str
    provider: str
    ingest_url: str
    priorities: dict[str, str] | None
    secrets: list[SecretInfo]
    has_stripe_api_key: bool
    created_at: datetime
    secret: str | None = None  # only in the answer to create: the secret generated or given
