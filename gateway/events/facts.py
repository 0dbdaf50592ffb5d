"""Billing facts of a Stripe event, extracted once at ingest into columns of their own, so that
anomaly feature windows aggregate them in SQL instead of re-reading every payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Facts:
    customer: str | None = None  # the Stripe customer id the event is about
    card_fingerprint: str | None = None  # the card behind a charge, when Stripe says
    amount: int | None = None  # signed minor units: issued refunds and credit notes, and credit balances, are negative


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


# Money leaving the merchant, once per refund or credit note: the event that issues it, with the
# field holding its amount. Updates and failures of one describe an amount already counted (they
# double-counted it); voiding a credit note gives its amount back.
_ISSUED = {"charge.refunded": "amount_refunded", "refund.created": "amount", "credit_note.created": "total"}
_GIVEN_BACK = {"credit_note.voided": "total"}


def _amount(event_type: str, obj: dict[str, Any]) -> int | None:
    if event_type in _ISSUED:
        value = _int(obj.get(_ISSUED[event_type]))
        return None if value is None else -abs(value)
    if event_type in _GIVEN_BACK:
        value = _int(obj.get(_GIVEN_BACK[event_type]))
        return None if value is None else abs(value)
    if event_type.startswith(("refund.", "credit_note.")):
        return None
    return _int(obj.get("total" if event_type.startswith("invoice.") else "amount"))


_INT64 = 2**63 - 1  # the amount column's range; its negation too


def _int(value: Any) -> int | None:
    """An integer the column can hold: a larger one is malformed, and would fail the whole group commit."""
    return value if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value <= _INT64 else None
