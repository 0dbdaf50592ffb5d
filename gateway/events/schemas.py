"""API shapes of the event log and delivery state."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from gateway.events.models import Attempt, Delivery, Event


class DeliveryOut(msgspec.Struct):
    id: uuid.UUID
    event_id: uuid.UUID
    endpoint_id: uuid.UUID
    status: str
    attempts: int
    is_replay: bool
    replay_job_id: uuid.UUID | None
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    completed_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: Delivery) -> DeliveryOut:
        return cls(
            id=row.id,
            event_id=row.event_id,
            endpoint_id=row.endpoint_id,
            status=row.status,
            attempts=row.attempt_count,
            is_replay=row.is_replay,
            replay_job_id=row.replay_job_id,
            next_attempt_at=row.next_attempt_at,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            last_attempt_at=row.last_attempt_at,
            completed_at=row.completed_at,
            created_at=row.created_at,
        )


class AttemptOut(msgspec.Struct):
    id: uuid.UUID
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    trace_id: str | None

    @classmethod
    def of(cls, row: Attempt) -> AttemptOut:
        return cls(
            id=row.id,
            number=row.number,
            started_at=row.started_at,
            duration_ms=row.duration_ms,
            status_code=row.status_code,
            error=row.error,
            response_excerpt=row.response_excerpt,
            trace_id=row.trace_id,
        )


class EventOut(msgspec.Struct, omit_defaults=True):
    id: uuid.UUID
    source_id: uuid.UUID | None
    external_id: str
    type: str
    priority: str
    received_at: datetime
    provider_created_at: datetime | None
    # Detail only: the stored headers, the body byte for byte, and its deliveries.
    headers: dict[str, str] | None = None
    payload: msgspec.Raw | None = None
    deliveries: list[DeliveryOut] | None = None

    @classmethod
    def of(cls, row: Event) -> EventOut:
        return cls(
            id=row.id,
            source_id=row.source_id,
            external_id=row.external_id,
            type=row.type,
            priority=row.priority,
            received_at=row.received_at,
            provider_created_at=row.provider_created_at,
        )
