"""Billing facts of a Stripe event, extracted once at ingest into columns of their own, so that
anomaly feature windows aggregate them in SQL instead of re-reading every payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Facts:
    customer: str | None = None  # the Stripe customer id the event is about
    card_fingerprint: str | None = None  # the card behind a charge, when Stripe says
    amount: int | None = None  # signed minor units: refunds and credit balances are negative


NONE = Facts()


def stripe_facts(event_type: str, payload: dict[str, Any]) -> Facts:
    """What ``ml/`` needs from one Stripe event; anything malformed is simply absent."""
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return NONE
    customer = obj.get("customer")
    if isinstance(customer, dict):  # expanded
        customer = customer.get("id")
    return Facts(
        customer=customer[:255] if isinstance(customer, str) else None,
        card_fingerprint=_fingerprint(obj),
        amount=_amount(event_type, obj),
    )


def _fingerprint(obj: dict[str, Any]) -> str | None:
    details = obj.get("payment_method_details")
    card = details.get("card") if isinstance(details, dict) else None
    value = card.get("fingerprint") if isinstance(card, dict) else None
    return value[:64] if isinstance(value, str) else None


def _amount(event_type: str, obj: dict[str, Any]) -> int | None:
    if event_type == "charge.refunded":
        value = obj.get("amount_refunded")
        return -value if isinstance(value, int) else None
    if event_type.startswith("refund.") or event_type.startswith("credit_note."):
        value = obj.get("amount") if event_type.startswith("refund.") else obj.get("total")
        return -abs(value) if isinstance(value, int) else None
    if event_type.startswith("invoice."):
        value = obj.get("total")
    else:
        value = obj.get("amount")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
