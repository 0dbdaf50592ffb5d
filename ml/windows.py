"""Offline feature extraction: received events in, closed ``Window``s out, with the semantics of ingest.

Ingest stores an event once per (tenant, event id), counts repeats as duplicates and never stores
an event whose signature failed; the online SQL aggregates what ingest stored. This builder applies
the same rules to a stream of received events so the evaluator sees what production would see.
Windows are aligned to multiples of ``seconds`` since the epoch, and every tenant gets a window for
every period from its first request on, empty or not, because "events stopped" is only visible as
a run of empty windows. Unlike ingest, which remembers every id, the builder forgets an id
``dedupe_seconds`` (a day) after it first saw it: re-sends come within hours, and a week of a busy
tenant's ids would otherwise dominate the evaluator's memory.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gateway.events.facts import stripe_facts
from ml.features import Window, family

_REFUNDS = ("charge.refunded", "refund.created")
_FAILED_PAYMENTS = ("charge.failed", "invoice.payment_failed")


@dataclass
class _Open:
    """The window being filled for one tenant, plus the sets that become distinct counts."""

    window: Window
    failed_customers: set[str] = field(default_factory=set)
    failed_cards: set[str] = field(default_factory=set)
    lags: list[float] = field(default_factory=list)


@dataclass
class _Tenant:
    current: _Open
    seen: set[str] = field(default_factory=set)
    seen_order: deque[tuple[float, str]] = field(default_factory=deque)  # (first seen, id), oldest first
    payment_failed_at: dict[str, float] = field(default_factory=dict)  # customer -> last invoice.payment_failed (epoch s)


class WindowBuilder:
    """Feed received events in time order; ``add`` returns the windows that closed (all tenants)."""

    def __init__(self, seconds: int = 60, lapse_lookback_seconds: int = 30 * 86400, dedupe_seconds: int = 86400) -> None:
        self.seconds = seconds
        self.lapse_lookback_seconds = lapse_lookback_seconds
        self.dedupe_seconds = dedupe_seconds
        self._tenants: dict[str, _Tenant] = {}
        self._clock: int | None = None  # start of the window that `now` falls in, epoch seconds

    def add(self, tenant: str, received_at: datetime, event: dict[str, Any], signature_valid: bool = True) -> list[Window]:
        now = received_at.timestamp()
        closed = self._advance(now)
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(current=self._open(tenant, self._clock))
        self._count(state, now, event, signature_valid)
        return closed

    def flush(self) -> list[Window]:
        """Close every tenant's current window (end of input)."""
        closed = [self._close(state.current) for state in self._tenants.values()]
        for name, state in self._tenants.items():
            state.current = self._open(name, state.current.window.start.timestamp() + self.seconds)
        return closed

    def _advance(self, now: float) -> list[Window]:
        """Close every window that ended at or before ``now``, emitting empty ones for silent tenants."""
        start = int(now - now % self.seconds)
        if self._clock is not None and start < self._clock:
            raise ValueError("events must be added in received order")
        closed: list[Window] = []
        if self._clock is not None:
            for period in range(self._clock, start, self.seconds):
                for name, state in self._tenants.items():
                    closed.append(self._close(state.current))
                    state.current = self._open(name, period + self.seconds)
        self._clock = start
        return closed

    def _open(self, tenant: str, start: float) -> _Open:
        return _Open(Window(tenant=tenant, start=datetime.fromtimestamp(start, timezone.utc), seconds=self.seconds))

    @staticmethod
    def _close(current: _Open) -> Window:
        window = current.window
        window.failed_customers = len(current.failed_customers)
        window.failed_cards = len(current.failed_cards)
        if current.lags:
            window.lag_p50 = statistics.median(current.lags)
            window.lag_max = max(current.lags)
        return window

    def _forget(self, state: _Tenant, now: float) -> None:
        while state.seen_order and state.seen_order[0][0] <= now - self.dedupe_seconds:
            state.seen.discard(state.seen_order.popleft()[1])

    def _count(self, state: _Tenant, now: float, event: dict[str, Any], signature_valid: bool) -> None:
        current = state.current
        window = current.window
        if not signature_valid:
            window.bad_signatures += 1
            return
        event_id = event.get("id")
        self._forget(state, now)
        if event_id in state.seen:
            window.duplicates += 1
            return
        if isinstance(event_id, str):
            state.seen.add(event_id)
            state.seen_order.append((now, event_id))
        event_type = event.get("type") if isinstance(event.get("type"), str) else ""
        facts = stripe_facts(event_type, event)
        window.events += 1
        name = family(event_type)
        window.families[name] = window.families.get(name, 0) + 1
        created = event.get("created")
        if isinstance(created, (int, float)) and not isinstance(created, bool):
            current.lags.append(max(0.0, now - created))
        if facts.amount is not None and facts.amount < 0:
            window.negative_amount += -facts.amount
            if event_type not in _REFUNDS:
                window.max_credit = max(window.max_credit, -facts.amount)
        if event_type == "charge.failed":
            window.charge_failed += 1
            if facts.card_fingerprint:
                current.failed_cards.add(facts.card_fingerprint)
        elif event_type == "charge.succeeded":
            window.charge_succeeded += 1
            if facts.amount is not None and facts.amount > window.max_charge:
                window.max_charge = facts.amount
        elif event_type == "payment_intent.payment_failed":
            window.payment_failed += 1
        elif event_type == "payment_intent.succeeded":
            window.payment_succeeded += 1
        elif event_type == "invoice.payment_failed":
            window.invoice_payment_failed += 1
            if facts.customer:
                state.payment_failed_at[facts.customer] = now
        elif event_type in _REFUNDS:
            window.refunds += 1
            if facts.amount is not None:
                window.max_refund = max(window.max_refund, abs(facts.amount))
        elif event_type == "charge.dispute.created":
            window.disputes += 1
        elif event_type == "radar.early_fraud_warning.created":
            window.fraud_warnings += 1
        elif event_type == "customer.subscription.deleted" and facts.customer:
            failed_at = state.payment_failed_at.get(facts.customer)
            if failed_at is not None and now - failed_at <= self.lapse_lookback_seconds:
                window.lapses += 1
        if event_type in _FAILED_PAYMENTS and facts.customer:
            current.failed_customers.add(facts.customer)
