"""WindowBuilder: the offline feature extraction must count exactly what ingest would store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.events.facts import stripe_facts
from ml.features import Window
from ml.windows import WindowBuilder

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def _event(event_id: str, event_type: str, at: datetime, **obj: Any) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "created": int(at.timestamp()), "data": {"object": obj}}


def _charge(amount: int = 1000, customer: str | None = "cus_1", fingerprint: str = "fp1") -> dict[str, Any]:
    return {"amount": amount, "customer": customer, "payment_method_details": {"card": {"fingerprint": fingerprint}}}


def _windows(requests: list[tuple[str, datetime, dict[str, Any], bool]]) -> list[Window]:
    builder = WindowBuilder()
    closed = [w for tenant, at, event, valid in requests for w in builder.add(tenant, at, event, valid)]
    return closed + builder.flush()


def test_counts_families_and_charge_outcomes() -> None:
    at = T0 + timedelta(seconds=5)
    (window,) = _windows(
        [
            ("a", at, _event("evt_1", "charge.succeeded", at, **_charge()), True),
            ("a", at, _event("evt_2", "charge.failed", at, **_charge(customer="cus_2", fingerprint="fp2")), True),
            ("a", at, _event("evt_3", "charge.failed", at, **_charge(customer="cus_2", fingerprint="fp3")), True),
            ("a", at, _event("evt_4", "customer.subscription.updated", at, customer="cus_1"), True),
            ("a", at, _event("evt_5", "charge.dispute.created", at), True),
            ("a", at, _event("evt_6", "radar.early_fraud_warning.created", at), True),
            ("a", at, _event("evt_7", "price.updated", at), True),
        ]
    )
    assert window.tenant == "a" and window.start == T0 and window.seconds == 60
    assert window.events == 7
    assert window.families == {"charge": 3, "subscription": 1, "dispute": 1, "radar": 1, "other": 1}
    assert (window.charge_succeeded, window.charge_failed) == (1, 2)
    assert (window.failed_customers, window.failed_cards) == (1, 2)
    assert window.charge_failure_ratio == pytest.approx(2 / 3)
    assert (window.disputes, window.fraud_warnings) == (1, 1)


def test_counts_payment_intent_outcomes() -> None:
    at = T0 + timedelta(seconds=5)
    (window,) = _windows(
        [
            ("a", at, _event("evt_1", "payment_intent.succeeded", at, customer="cus_1"), True),
            ("a", at, _event("evt_2", "payment_intent.payment_failed", at, customer="cus_2"), True),
            ("a", at, _event("evt_3", "payment_intent.payment_failed", at, customer="cus_3"), True),
            ("a", at, _event("evt_4", "payment_intent.created", at, customer="cus_4"), True),
        ]
    )
    assert (window.payment_succeeded, window.payment_failed) == (1, 2)
    assert window.families == {"payment_intent": 4}
    assert (window.charge_failed, window.failed_customers) == (0, 0)  # distinct failing customers stay charge/invoice ones


def test_repeats_are_duplicates_and_bad_signatures_count_only_as_such() -> None:
    at = T0 + timedelta(seconds=1)
    event = _event("evt_1", "charge.failed", at, **_charge())
    (window,) = _windows(
        [
            ("a", at, event, True),
            ("a", at, event, True),
            ("a", at, event, True),
            ("a", at, _event("evt_9", "charge.failed", at), False),
        ]
    )
    assert window.events == 1 and window.charge_failed == 1
    assert window.duplicates == 2
    assert window.bad_signatures == 1
    assert window.duplicate_ratio == pytest.approx(2 / 3)


def test_a_forged_request_does_not_claim_the_event_id() -> None:
    at = T0 + timedelta(seconds=1)
    event = _event("evt_1", "charge.succeeded", at)
    (window,) = _windows([("a", at, event, False), ("a", at, event, True)])
    assert (window.events, window.duplicates, window.bad_signatures) == (1, 0, 1)


def test_dedupe_is_per_tenant() -> None:
    at = T0 + timedelta(seconds=1)
    event = _event("evt_1", "charge.succeeded", at)
    windows = _windows([("a", at, event, True), ("b", at, event, True)])
    assert sorted((w.tenant, w.events, w.duplicates) for w in windows) == [("a", 1, 0), ("b", 1, 0)]


def test_lag_is_receipt_minus_created() -> None:
    created = T0
    requests = [("a", T0 + timedelta(seconds=s), _event(f"evt_{s}", "customer.updated", created), True) for s in (2, 4, 30)]
    (window,) = _windows(requests)
    assert window.lag_p50 == 4 and window.lag_max == 30


def test_amounts_refunds_and_negative_invoices() -> None:
    at = T0 + timedelta(seconds=1)
    (window,) = _windows(
        [
            ("a", at, _event("evt_1", "charge.refunded", at, amount=5000, amount_refunded=4000), True),
            ("a", at, _event("evt_2", "refund.created", at, amount=700), True),
            ("a", at, _event("evt_3", "invoice.finalized", at, total=-2500, customer="cus_1"), True),
            ("a", at, _event("evt_4", "invoice.paid", at, total=9000, customer="cus_1"), True),
            ("a", at, _event("evt_5", "credit_note.created", at, total=1100), True),
            ("a", at, _event("evt_6", "refund.updated", at, amount=700), True),
            ("a", at, _event("evt_7", "refund.failed", at, amount=700), True),
            ("a", at, _event("evt_8", "credit_note.updated", at, total=1100), True),
            ("a", at, _event("evt_9", "credit_note.voided", at, total=1100), True),
        ]
    )
    assert window.refunds == 2
    assert window.max_refund == 4000
    assert window.max_credit == 2500  # the negative invoice: refunds are not credits
    assert window.negative_amount == 4000 + 700 + 2500 + 1100  # issued once each; updates, failures, voids add nothing


def test_the_largest_charge_is_of_successful_charges() -> None:
    at = T0 + timedelta(seconds=1)
    (window,) = _windows(
        [
            ("a", at, _event("evt_1", "charge.succeeded", at, **_charge(1000)), True),
            ("a", at, _event("evt_2", "charge.succeeded", at, **_charge(2500)), True),
            ("a", at, _event("evt_3", "charge.failed", at, **_charge(9000)), True),
            ("a", at, _event("evt_4", "invoice.paid", at, total=7000, customer="cus_1"), True),
        ]
    )
    assert window.max_charge == 2500


@pytest.mark.parametrize(
    ("event_type", "obj", "amount"),
    [
        ("charge.refunded", {"amount": 5000, "amount_refunded": 4000}, -4000),
        ("refund.created", {"amount": 700}, -700),
        ("credit_note.created", {"total": 1100}, -1100),
        ("credit_note.voided", {"total": 1100}, 1100),
        ("refund.updated", {"amount": 700}, None),
        ("refund.failed", {"amount": 700}, None),
        ("credit_note.updated", {"total": 1100}, None),
        ("invoice.finalized", {"total": -2500}, -2500),
        ("charge.succeeded", {"amount": 1000}, 1000),
        ("refund.created", {"amount": True}, None),
    ],
)
def test_only_issued_refunds_and_credit_notes_are_negative(event_type: str, obj: dict[str, Any], amount: int | None) -> None:
    assert stripe_facts(event_type, {"data": {"object": obj}}).amount == amount


def test_lapse_needs_a_failed_invoice_payment_within_the_lookback() -> None:
    builder = WindowBuilder(lapse_lookback_seconds=3600)
    failed = T0 + timedelta(seconds=1)
    builder.add("a", failed, _event("evt_1", "invoice.payment_failed", failed, customer="cus_1"))
    soon, late = failed + timedelta(minutes=30), failed + timedelta(hours=2)
    closed = builder.add("a", soon, _event("evt_2", "customer.subscription.deleted", soon, customer="cus_1"))
    closed += builder.add("a", soon, _event("evt_3", "customer.subscription.deleted", soon, customer="cus_2"))
    closed += builder.add("a", late, _event("evt_4", "customer.subscription.deleted", late, customer="cus_1"))
    windows = {w.start: w for w in closed + builder.flush()}
    assert windows[T0].invoice_payment_failed == 1 and windows[T0].failed_customers == 1
    assert windows[T0 + timedelta(minutes=30)].lapses == 1  # cus_2 never failed
    assert windows[T0 + timedelta(hours=2)].lapses == 0  # outside the lookback


def test_silent_tenants_get_empty_windows_from_their_first_event() -> None:
    builder = WindowBuilder()
    builder.add("quiet", T0 + timedelta(seconds=10), _event("evt_1", "customer.updated", T0))
    closed = builder.add("busy", T0 + timedelta(minutes=5, seconds=1), _event("evt_2", "customer.updated", T0))
    quiet = [w for w in closed if w.tenant == "quiet"]
    assert [w.start for w in quiet] == [T0 + timedelta(minutes=m) for m in range(5)]
    assert [w.events for w in quiet] == [1, 0, 0, 0, 0]
    assert all(w.lag_p50 is None for w in quiet[1:])
    assert {w.tenant for w in builder.flush()} == {"quiet", "busy"}


def test_events_must_arrive_in_order() -> None:
    builder = WindowBuilder()
    builder.add("a", T0 + timedelta(minutes=2), _event("evt_1", "customer.updated", T0))
    with pytest.raises(ValueError):
        builder.add("a", T0, _event("evt_2", "customer.updated", T0))


def test_ids_are_forgotten_after_the_dedupe_horizon() -> None:
    builder = WindowBuilder(dedupe_seconds=3600)
    at = T0 + timedelta(seconds=1)
    event = _event("evt_1", "invoice.paid", at)
    requests = [at, at + timedelta(minutes=59), at + timedelta(minutes=61)]
    windows = [w for when in requests for w in builder.add("a", when, event)] + builder.flush()
    by_start = {w.start: w for w in windows}
    assert by_start[T0].events == 1
    assert by_start[T0 + timedelta(minutes=59)].duplicates == 1  # within the hour: a re-send
    assert by_start[T0 + timedelta(minutes=61)].events == 1  # past it: the id was forgotten
