"""Feature windows: what the detectors and the model see of one tenant's traffic in one window.

The online path (``ml/online/``) fills a ``Window`` from the database with SQL aggregates; the
offline evaluator fills it from an events file. Both must agree field for field (a test replays
the same events through both). docs/ML.md has the table of every feature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

# Event families counted per window: the first segment of the type, except Stripe's nested ones.
FAMILIES = ("charge", "dispute", "payment_intent", "invoice", "subscription", "customer", "checkout", "refund", "radar", "other")
_NESTED = {"charge.dispute.": "dispute", "customer.subscription.": "subscription", "radar.early_fraud_warning.": "radar"}


def family(event_type: str) -> str:
    for prefix, name in _NESTED.items():
        if event_type.startswith(prefix):
            return name
    head = event_type.split(".", 1)[0]
    return head if head in FAMILIES else "other"


@dataclass
class Window:
    tenant: str
    start: datetime
    seconds: int
    events: int = 0  # stored (verified, first-seen) events received in the window
    families: dict[str, int] = field(default_factory=dict)
    charge_failed: int = 0
    charge_succeeded: int = 0
    invoice_payment_failed: int = 0
    payment_failed: int = 0  # payment_intent.payment_failed
    payment_succeeded: int = 0  # payment_intent.succeeded
    failed_customers: int = 0  # distinct customers among charge.failed / invoice.payment_failed
    failed_cards: int = 0  # distinct card fingerprints among charge.failed
    refunds: int = 0  # charge.refunded + refund.created
    disputes: int = 0  # charge.dispute.created
    fraud_warnings: int = 0  # radar.early_fraud_warning.created
    negative_amount: int = 0  # sum of |amount| over events with a negative amount (minor units)
    max_refund: int = 0  # largest single refund (minor units)
    max_credit: int = 0  # largest single negative amount that is not a refund: a credit note, a negative invoice (minor units)
    max_charge: int = 0  # largest single charge.succeeded amount (minor units): what the tenant sells, the scale before refunds
    lapses: int = 0  # customer.subscription.deleted of a customer with invoice.payment_failed in the lookback
    duplicates: int = 0  # provider retries of events already stored (ingest dedupe hits)
    bad_signatures: int = 0  # requests to the tenant's ingest URLs whose signature failed
    lag_p50: float | None = None  # seconds from the provider's `created` to Hookgate's receipt
    lag_max: float | None = None
    attempts: int = 0  # delivery attempts that started in the window
    attempt_failures: int = 0

    @property
    def charge_failure_ratio(self) -> float:
        charges = self.charge_failed + self.charge_succeeded
        return self.charge_failed / charges if charges else 0.0

    @property
    def duplicate_ratio(self) -> float:
        seen = self.events + self.duplicates
        return self.duplicates / seen if seen else 0.0

    @property
    def delivery_failure_ratio(self) -> float:
        return self.attempt_failures / self.attempts if self.attempts else 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
