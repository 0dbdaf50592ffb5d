"""Storing events once per (tenant, source, provider event id): the dedupe that every way in
(the ingest route, a Stripe backfill) goes through."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Insert

from gateway.database import dialect_insert, new_id, utcnow
from gateway.events.facts import NONE, Facts
from gateway.events.models import Event


def event_row(
    tenant_id: uuid.UUID,
    source_id: uuid.UUID,
    *,
    external_id: str,
    type: str,
    created_at: datetime | None,
    priority: str,
    body: bytes,
    headers: dict[str, str],
    facts: Facts = NONE,
    trace_context: str | None = None,
) -> dict[str, object]:
    return {
        "id": new_id(),
        "tenant_id": tenant_id,
        "source_id": source_id,
        "external_id": external_id[:255],
        "type": type[:255],
        "priority": priority,
        "body": body,
        "headers": headers,
        "provider_created_at": created_at,
        "received_at": utcnow(),
        "customer": facts.customer,
        "card_fingerprint": facts.card_fingerprint,
        "amount": facts.amount,
        "trace_context": trace_context,
    }


def insert_once(dialect_name: str, rows: list[dict[str, object]]) -> Insert:
    """INSERT the rows, skipping any already stored; RETURNING the ids of those that were new."""
    return (
        dialect_insert(dialect_name)(Event)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["tenant_id", "source_id", "external_id"])
        .returning(Event.id)
    )
