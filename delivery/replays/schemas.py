"""API shapes of replay jobs: bulk replays, dead-letter redrives and Stripe backfills."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from delivery.replays.models import ReplayJob

TypePattern = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class ReplayCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A window on when Hookgate received the events (``until`` defaults to now)."""

    since: datetime
    until: datetime | None = None
    types: Annotated[list[TypePattern], msgspec.Meta(min_length=1, max_length=50)] | None = None
    source_id: uuid.UUID | None = None
    endpoint_id: uuid.UUID | None = None
    only_failed: bool = False


class RedriveCreate(msgspec.Struct, forbid_unknown_fields=True):
    """The dead-letter list's filters: a window on when the deliveries were created, and/or
    exactly these dead deliveries."""

    endpoint_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    delivery_ids: Annotated[list[uuid.UUID], msgspec.Meta(min_length=1, max_length=1000)] | None = None


class BackfillCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A window on Stripe's ``created`` time of the events (``until`` defaults to now)."""

    since: datetime
    until: datetime | None = None


class ReplayJobOut(msgspec.Struct):
    id: uuid.UUID
    kind: str
    status: str
    total: int | None
    done: int
    skipped: int
    since: datetime | None
    until: datetime | None
    types: list[str] | None
    source_id: uuid.UUID | None
    endpoint_id: uuid.UUID | None
    only_failed: bool
    delivery_ids: list[str] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: ReplayJob) -> ReplayJobOut:
        return cls(**{field: getattr(job, field) for field in cls.__struct_fields__})
