"""Feature windows from the database: a handful of grouped SQL aggregates over one window of
every tenant's events, ingest tallies and delivery attempts; payloads are never read (the
billing facts were extracted into columns at ingest)."""

from __future__ import annotations

import statistics
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, distinct, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from gateway.events.models import Attempt, Event
from gateway.ingest.tallies import IngestTally
from ml.features import Window, family

_Of = Callable[[uuid.UUID], Window]
CHARGE_FAILED, CHARGE_SUCCEEDED = "charge.failed", "charge.succeeded"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
SUBSCRIPTION_DELETED = "customer.subscription.deleted"
REFUNDS = ("charge.refunded", "refund.created")
# Plain per-type counts that are features of their own.
_COUNTED = {
    CHARGE_FAILED: "charge_failed",
    CHARGE_SUCCEEDED: "charge_succeeded",
    INVOICE_PAYMENT_FAILED: "invoice_payment_failed",
    "payment_intent.payment_failed": "payment_failed",
    "payment_intent.succeeded": "payment_succeeded",
    "charge.dispute.created": "disputes",
    "radar.early_fraud_warning.created": "fraud_warnings",
    **{refund: "refunds" for refund in REFUNDS},
}


async def window_features(
    session: AsyncSession,
    start: datetime,
    seconds: int,
    *,
    lapse_lookback: timedelta,
    tenants: Iterable[uuid.UUID] = (),
) -> dict[uuid.UUID, Window]:
    """The window [start, start + seconds) of every tenant with traffic in it, plus ``tenants``
    (those with history: a window without events is what "events stopped" looks like)."""
    end = start + timedelta(seconds=seconds)
    windows: dict[uuid.UUID, Window] = {}

    def of(tenant_id: uuid.UUID) -> Window:
        if tenant_id not in windows:
            windows[tenant_id] = Window(tenant=str(tenant_id), start=start, seconds=seconds)
        return windows[tenant_id]

    for tenant_id in tenants:
        of(tenant_id)
    stored = and_(Event.received_at >= start, Event.received_at < end, Event.source_id.is_not(None))
    await _type_counts(session, stored, of)
    await _billing(session, stored, of)
    await _lapses(session, stored, start - lapse_lookback, end, of)
    await _lags(session, stored, of)
    for tenant_id, duplicates, bad in await session.execute(
        select(IngestTally.tenant_id, func.sum(IngestTally.duplicates), func.sum(IngestTally.bad_signatures))
        .where(IngestTally.minute >= start, IngestTally.minute < end)
        .group_by(IngestTally.tenant_id)
    ):
        window = of(tenant_id)
        window.duplicates, window.bad_signatures = int(duplicates or 0), int(bad or 0)
    for tenant_id, attempts, failures in await session.execute(
        select(Attempt.tenant_id, func.count(), func.sum(case((Attempt.status_code.between(200, 299), 0), else_=1)))
        .where(Attempt.started_at >= start, Attempt.started_at < end)
        .group_by(Attempt.tenant_id)
    ):
        window = of(tenant_id)
        window.attempts, window.attempt_failures = int(attempts), int(failures or 0)
    return windows


async def _type_counts(session: AsyncSession, stored: ColumnElement[bool], of: _Of) -> None:
    rows = await session.execute(select(Event.tenant_id, Event.type, func.count()).where(stored).group_by(Event.tenant_id, Event.type))
    for tenant_id, event_type, count in rows:
        window = of(tenant_id)
        window.events += count
        name = family(event_type)
        window.families[name] = window.families.get(name, 0) + count
        if event_type in _COUNTED:
            setattr(window, _COUNTED[event_type], getattr(window, _COUNTED[event_type]) + count)


async def _billing(session: AsyncSession, stored: ColumnElement[bool], of: _Of) -> None:
    failed = Event.type.in_((CHARGE_FAILED, INVOICE_PAYMENT_FAILED))
    negative = Event.amount < 0
    rows = await session.execute(
        select(
            Event.tenant_id,
            func.count(distinct(case((failed, Event.customer)))),
            func.count(distinct(case((Event.type == CHARGE_FAILED, Event.card_fingerprint)))),
            # SQLite's sum() of integers fails past 2**63 (two refunds near the column's limit); total() is a float
            (func.total if session.bind.dialect.name == "sqlite" else func.sum)(case((negative, -Event.amount), else_=0)),
            func.max(case((and_(Event.type.in_(REFUNDS), negative), -Event.amount))),
            func.max(case((and_(Event.type.not_in(REFUNDS), negative), -Event.amount))),
            func.max(case((and_(Event.type == CHARGE_SUCCEEDED, Event.amount > 0), Event.amount))),
        )
        .where(stored)
        .group_by(Event.tenant_id)
    )
    for tenant_id, customers, cards, negative_sum, max_refund, max_credit, max_charge in rows:
        window = of(tenant_id)
        window.failed_customers, window.failed_cards = int(customers), int(cards)
        window.negative_amount, window.max_refund = int(negative_sum or 0), int(max_refund or 0)
        window.max_credit, window.max_charge = int(max_credit or 0), int(max_charge or 0)


async def _lapses(session: AsyncSession, stored: ColumnElement[bool], since: datetime, end: datetime, of: _Of) -> None:
    """Subscriptions deleted in the window whose customer had a payment fail in the lookback."""
    failure = aliased(Event)
    earlier_failure = exists().where(
        failure.tenant_id == Event.tenant_id,
        failure.customer == Event.customer,
        failure.type == INVOICE_PAYMENT_FAILED,
        failure.received_at >= since,
        failure.received_at < end,
    )
    rows = await session.execute(
        select(Event.tenant_id, func.count())
        .where(stored, Event.type == SUBSCRIPTION_DELETED, Event.customer.is_not(None), earlier_failure)
        .group_by(Event.tenant_id)
    )
    for tenant_id, count in rows:
        of(tenant_id).lapses = int(count)


async def _lags(session: AsyncSession, stored: ColumnElement[bool], of: _Of) -> None:
    """Provider lag, median and max. Medians are not portable SQL, and the lags of one window
    are small numbers, so they are read and reduced here."""
    lags: dict[uuid.UUID, list[float]] = defaultdict(list)
    rows = await session.execute(
        select(Event.tenant_id, Event.received_at, Event.provider_created_at).where(stored, Event.provider_created_at.is_not(None))
    )
    for tenant_id, received_at, created_at in rows:
        lags[tenant_id].append(max(0.0, received_at.timestamp() - created_at.timestamp()))  # as ml/windows.py
    for tenant_id, values in lags.items():
        window = of(tenant_id)
        window.lag_p50, window.lag_max = statistics.median(values), max(values)
