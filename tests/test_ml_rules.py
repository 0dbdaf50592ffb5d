"""Rule detectors and detect() on hand-built windows: each fires on its incident and stays quiet on ordinary noise."""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ml.baseline import REFRESH_WINDOWS, Baseline, refresh_block, windows_before
from ml.detection import detect
from ml.features import Window
from ml.findings import Finding
from ml.online.monitor import _tenant_thresholds
from ml.rules import (
    RECENT_WINDOWS,
    Rule,
    Thresholds,
    bad_signature,
    card_testing,
    duplicate_flood,
    failure_spike,
    needed,
    negative_invoice,
    silent_lapse,
    volume_drop,
    webhook_lag,
)

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
DEFAULTS = Thresholds()


def _history(per_minute: float, minutes: int = 1500, seed: int = 0) -> list[Window]:
    """Ordinary traffic: Poisson events, ~15% charges with ~4% failing, one customer per failure, the odd refund."""
    rng = np.random.default_rng(seed)
    windows = []
    for m in range(minutes):
        events = int(rng.poisson(per_minute))
        failed = int(rng.poisson(per_minute * 0.15 * 0.04))
        refund = int(rng.integers(500, 5000)) if rng.random() < 0.02 else 0
        windows.append(
            Window(
                "t",
                T0 + timedelta(minutes=m),
                60,
                events=events,
                charge_failed=failed,
                charge_succeeded=int(rng.poisson(per_minute * 0.15 * 0.96)),
                failed_customers=failed,
                failed_cards=failed,
                refunds=int(refund > 0),
                max_refund=refund,
                negative_amount=refund,
                duplicates=int(rng.poisson(per_minute * 0.003)),
                lag_p50=float(rng.uniform(0.5, 2)) if events else None,
                lag_max=float(rng.uniform(2, 4)) if events else None,
            )
        )
    return windows


def _next(history: list[Window], **fields: object) -> Window:
    last = history[-1]
    return replace(Window("t", last.start + timedelta(minutes=1), 60), **fields)


def _run(rule: Rule, history: list[Window], window: Window, t: Thresholds = DEFAULTS) -> Finding | None:
    baseline = Baseline.from_history(history, window.start)
    return rule([*history[-(RECENT_WINDOWS - 1) :], window], baseline, t)


def _quiet(rule: Rule, history: list[Window]) -> int:
    """How many windows of the ordinary history itself the rule flags."""
    return sum(_run(rule, history[:i], history[i]) is not None for i in range(300, len(history)))


def test_thresholds_overrides() -> None:
    t = Thresholds.with_overrides({"duplicate_min": 25, "lag_seconds": 120})
    assert t.duplicate_min == 25 and t.lag_seconds == 120 and t.surprise == DEFAULTS.surprise
    assert Thresholds.with_overrides(None) == DEFAULTS
    with pytest.raises(ValueError, match="no_such_threshold"):
        Thresholds.with_overrides({"no_such_threshold": 1})
    assert Thresholds.with_overrides(asdict(DEFAULTS)) == DEFAULTS  # every default is in its own range


@pytest.mark.parametrize(
    "overrides",
    [{"lapse_horizon_windows": 0}, {"lapse_horizon_windows": 2.5}, {"lapse_horizon_windows": 60}, {"lapse_min": -1}, {"duplicate_min": 0.5},
     {"surprise": 0}, {"surprise": math.inf}, {"lag_seconds": math.nan}, {"drop_ratio": 1.5}, {"failure_floor_rate": 0},
     {"critical_factor": 0.9}, {"large_refund_min": 1e-320}, {"negative_amount_min": 0.5}, {"lag_seconds": 0.5}],
)
def test_thresholds_out_of_range_are_refused_by_name(overrides: dict[str, float]) -> None:
    """A zero horizon divided by zero and stopped every tenant's scoring; a negative minimum alerts on anything."""
    [name] = overrides
    with pytest.raises(ValueError, match=f"out of range: {name} "):
        Thresholds.with_overrides(overrides)


def test_stored_thresholds_no_longer_valid_fall_back_to_the_defaults() -> None:
    tenant_id = uuid.uuid4()
    assert _tenant_thresholds(tenant_id, {"lapse_horizon_windows": 0}) == DEFAULTS
    assert _tenant_thresholds(tenant_id, {"duplicate_min": 9}).duplicate_min == 9


@pytest.mark.parametrize(
    "rule",
    [card_testing, failure_spike, silent_lapse, duplicate_flood, webhook_lag, negative_invoice, volume_drop, bad_signature],
)
def test_rules_stay_quiet_on_ordinary_traffic(rule: Rule) -> None:
    assert _quiet(rule, _history(20, minutes=900)) == 0


def test_card_testing_three_cards_beyond_the_customers() -> None:
    history = _history(20)
    three = _next(history, events=22, charge_failed=4, failed_cards=4, failed_customers=1)
    assert _run(card_testing, history, three) is not None
    retry = _next(history, events=22, charge_failed=4, failed_cards=4, failed_customers=2)
    assert _run(card_testing, history, retry) is None  # two customers each retrying with a second card


def test_card_testing_many_cards_few_customers() -> None:
    history = _history(20)
    burst = _next(history, events=40, charge_failed=30, charge_succeeded=3, failed_cards=30, failed_customers=1)
    finding = _run(card_testing, history, burst)
    assert finding is not None and finding.kind == "card_testing" and finding.severity == "critical"
    assert "30 distinct cards failed for 1 customers" in finding.explanation[0]
    outage = _next(history, events=40, charge_failed=30, charge_succeeded=3, failed_cards=30, failed_customers=30)
    assert _run(card_testing, history, outage) is None  # one card per customer: not card testing
    assert _run(failure_spike, history, burst) is None  # ...and card testing is not a failure spike


def test_failure_spike_is_volume_aware() -> None:
    busy, slow = _history(100), _history(1)
    spike = {"charge_failed": 6, "failed_customers": 6, "failed_cards": 6}
    assert (
        _run(failure_spike, busy, _next(busy, events=100, charge_succeeded=14, **spike)) is None
    )  # 6 of 20: busy tenants see that
    finding = _run(failure_spike, slow, _next(slow, events=8, charge_succeeded=1, **spike))
    assert finding is not None and finding.kind == "failure_spike"
    assert "6 of 7 payments failed" in finding.explanation[0]
    storm = {"charge_failed": 40, "failed_customers": 40, "failed_cards": 40}
    assert _run(failure_spike, busy, _next(busy, events=100, charge_succeeded=5, **storm)) is not None


def test_longer_horizons_need_less_surprise_but_never_under_half() -> None:
    assert needed(12, 1) == 12
    assert needed(12, 30) == pytest.approx(12 - np.log(30))
    assert needed(12, 100_000) == 6


def test_failure_spike_counts_a_slow_outage_at_a_long_horizon() -> None:
    slow = _history(0.5)  # ~4 charges an hour
    windows = list(slow)
    failing = {"events": 1, "charge_failed": 1, "failed_customers": 1, "failed_cards": 1}
    for minute in range(25):  # a charge every five minutes, four of the last five failing
        charge = failing if minute % 5 == 4 and minute > 5 else {"events": 1, "charge_succeeded": 1}
        windows.append(_next(windows, **(charge if minute % 5 == 4 else {"events": 0})))
    finding = _run(failure_spike, windows[:-1], windows[-1])
    assert finding is not None and finding.features["charge_failed"] == 4
    assert finding.features["horizon_windows"] > 1


def test_failure_spike_does_not_reopen_from_an_outage_that_ended() -> None:
    windows = list(_history(0.5))
    before = Baseline.from_history(windows, windows[-1].start)  # the baseline as it was before the outage
    failing = {"events": 1, "charge_failed": 1, "failed_customers": 1, "failed_cards": 1}
    for _ in range(60):  # an hour of outage: a failed charge every minute
        windows.append(_next(windows, **failing))
    assert failure_spike([*windows[-(RECENT_WINDOWS - 1) :], _next(windows, **failing)], before, DEFAULTS) is not None
    for _ in range(100):  # then charges succeed again (the last 240 minutes still hold 38% failures)
        windows.append(_next(windows, events=1, charge_succeeded=1))
    ordinary_decline = [*windows[-(RECENT_WINDOWS - 1) :], _next(windows, **failing)]
    assert failure_spike(ordinary_decline, before, DEFAULTS) is None  # the old failures are not news again


def test_failure_spike_accumulates_evidence_over_windows() -> None:
    history = _history(2)
    windows = list(history)
    findings = []
    for _ in range(6):
        window = _next(windows, events=2, charge_failed=1, failed_customers=1, failed_cards=1)
        findings.append(_run(failure_spike, windows, window))
        windows.append(window)
    assert findings[0] is None and findings[-1] is not None and findings[-1].features["horizon_windows"] > 1


def test_failure_spike_horizons_are_dense_up_to_ten_windows() -> None:
    windows = list(_history(2))
    for _ in range(3):  # charges succeeding just before the outage
        windows.append(_next(windows, events=3, charge_succeeded=3))
    for _ in range(7):  # then one of two charges failing every minute
        windows.append(_next(windows, events=2, charge_failed=1, charge_succeeded=1, failed_customers=1, failed_cards=1))
    finding = _run(failure_spike, windows[:-1], windows[-1])
    assert finding is not None and finding.features["horizon_windows"] == 7  # 5 is not yet significant, 10 is diluted


def test_failure_spike_discounts_failures_that_come_in_clusters() -> None:
    independent = _history(20)
    rng = np.random.default_rng(1)
    paired = [replace(w, charge_failed=2 * (n := int(rng.poisson(0.06))), failed_customers=2 * n, failed_cards=2 * n) for w in independent]
    assert Baseline.from_history(paired, paired[-1].start).payment_failures.dispersion > 1.5  # customers failing two by two
    burst = {"events": 20, "charge_failed": 5, "failed_customers": 5, "failed_cards": 5}
    assert _run(failure_spike, independent, _next(independent, **burst)) is not None
    assert _run(failure_spike, paired, _next(paired, **burst)) is None  # routine for a tenant whose declines come in pairs


def test_failure_spike_counts_a_customers_second_card_once() -> None:
    history = _history(20)
    six = {"events": 20, "charge_failed": 6, "charge_succeeded": 3, "failed_customers": 6, "failed_cards": 6}
    assert _run(failure_spike, history, _next(history, **six)) is not None  # six customers' payments failing
    retried = six | {"failed_customers": 3}  # three declined customers, each failing again with another card
    assert _run(failure_spike, history, _next(history, **retried)) is None


def test_failure_spike_counts_failed_payment_intents_as_evidence() -> None:
    slow = [replace(w, payment_succeeded=w.charge_succeeded) for w in _history(0.5)]  # an intent per charge
    assert Baseline.from_history(slow, slow[-1].start).failure_rate == pytest.approx(0.02, abs=0.01)
    charges_only, both = list(slow), list(slow)
    for minute in range(6):  # an outage: every other charge fails, and so does every other intent
        charge = {"charge_failed": 1, "failed_customers": 1, "failed_cards": 1} if minute % 2 else {"charge_succeeded": 1}
        charges_only.append(_next(charges_only, events=1, **charge))
        intent = {"payment_failed": 1} if minute % 2 else {"payment_succeeded": 1}
        both.append(_next(both, events=2, **charge, **intent))
    assert _run(failure_spike, charges_only[:-1], charges_only[-1]) is None  # 3 of 6 charges: not yet
    finding = _run(failure_spike, both[:-1], both[-1])
    assert finding is not None and finding.features["payment_failures"] == 6 and finding.features["charge_failed"] == 3
    assert "payments failed" in finding.explanation[0] and "payment_intent.payment_failed 3" in finding.explanation[0]


def test_failure_spike_does_not_count_an_intent_and_its_charge_twice() -> None:
    """Where each failed intent comes with its failed charge, the pair is one failure (over-dispersion 2)."""
    rng = np.random.default_rng(2)
    paired = [replace(w, payment_succeeded=w.charge_succeeded) for w in _history(20)]
    paired = [replace(w, charge_failed=(n := int(rng.poisson(0.12))), payment_failed=n, failed_customers=n, failed_cards=n) for w in paired]
    assert Baseline.from_history(paired, paired[-1].start).payment_failures.dispersion > 1.5
    burst = {"events": 20, "charge_failed": 4, "payment_failed": 4, "charge_succeeded": 3, "payment_succeeded": 3}
    burst |= {"failed_customers": 4, "failed_cards": 4}
    independent = [replace(w, payment_failed=int(rng.poisson(0.12))) for w in _history(20)]
    independent = [replace(w, payment_succeeded=w.charge_succeeded) for w in independent]
    assert _run(failure_spike, independent, _next(independent, **burst)) is not None
    assert _run(failure_spike, paired, _next(paired, **burst)) is None  # four failed payments, not eight


def test_failure_spike_not_from_a_few_customers_failing_over_and_over() -> None:
    history = _history(20)
    assert Baseline.from_history(history, history[-1].start).failing_customer_share == pytest.approx(1.0)
    windows = list(history)
    for _ in range(3):  # one customer retrying one or two cards: not card-testing-like in any window
        windows.append(_next(windows, events=20, charge_failed=3, charge_succeeded=1, failed_customers=1, failed_cards=2))
    assert _run(failure_spike, windows[:-1], windows[-1]) is None
    windows = list(history)
    for _ in range(3):  # three different customers each minute: an outage
        windows.append(_next(windows, events=20, charge_failed=3, charge_succeeded=1, failed_customers=3, failed_cards=3))
    assert _run(failure_spike, windows[:-1], windows[-1]) is not None


def test_typical_failure_rate_leaves_card_testing_and_outages_out() -> None:
    history = _history(5)
    clean = Baseline.from_history(history, history[-1].start).failure_rate
    attack = {"charge_failed": 10, "failed_cards": 10, "failed_customers": 1}  # card testing: 200 failed charges
    tested = [replace(w, **attack) if 600 <= i < 620 else w for i, w in enumerate(history)]
    outage = {"charge_failed": 3, "charge_succeeded": 1, "failed_customers": 3, "failed_cards": 3}  # an hour at 75 %
    failed = [replace(w, **outage) if 600 <= i < 660 else w for i, w in enumerate(history)]
    for incident in (tested, failed):
        assert Baseline.from_history(incident, incident[-1].start).failure_rate == pytest.approx(clean, abs=0.01)


def test_typical_failure_rate_uses_the_tenants_card_testing_ratio() -> None:
    history = _history(5)
    clean = Baseline.from_history(history, history[-1].start).failure_rate
    pairs = {"charge_failed": 4, "charge_succeeded": 0, "failed_cards": 4, "failed_customers": 2}  # two cards per customer
    windows = [replace(w, **pairs) if i % 30 == 0 else w for i, w in enumerate(history)]  # every half hour
    default = Baseline.from_history(windows, windows[-1].start)  # ratio 3: customers retrying, ordinary declines
    strict = Baseline.from_history(windows, windows[-1].start, cards_per_customer=2.0)  # this tenant calls it card testing
    assert default.failure_rate > 2 * clean
    assert strict.failure_rate == pytest.approx(clean, abs=0.005)


def test_failure_spike_after_card_testing_is_judged_against_ordinary_declines() -> None:
    history = _history(1)  # 0.15 charges a minute, 4 % failing
    attack = {"events": 5, "charge_failed": 5, "failed_cards": 5, "failed_customers": 0}  # as a guest, 100 cards
    windows = [replace(w, **attack) if 600 <= i < 620 else w for i, w in enumerate(history)]
    for _ in range(8):  # then an outage: one of two payments failing every minute
        windows.append(_next(windows, events=2, charge_failed=1, charge_succeeded=1, failed_customers=1, failed_cards=1))
    assert Baseline.from_history(windows, windows[-1].start).failure_rate < 0.05  # not the attack's ~30 %
    assert _run(failure_spike, windows[:-1], windows[-1]) is not None


def test_a_young_tenant_s_outage_is_not_its_own_baseline() -> None:
    """In a tenant's first hour the newest GAP_WINDOWS are left out too: its 100 % outage had become
    "typical" after 15 windows, and the anomaly was resolved while every charge still failed."""
    young = _history(20, minutes=50)
    outage = young[:20] + [replace(w, charge_failed=5, charge_succeeded=0, failed_customers=5, failed_cards=5) for w in young[20:]]
    baseline = Baseline.from_history(outage, outage[-1].start + timedelta(minutes=1))
    assert baseline.windows == 20 and baseline.failure_rate < 0.2  # the first 20 windows only
    assert Baseline.from_history(outage[:25], outage[25].start).windows == 0  # nothing old enough yet: the floors


def test_every_window_of_a_block_is_judged_against_one_baseline_whoever_scores_it() -> None:
    """A baseline per block of REFRESH_WINDOWS windows, from the history before the block: a worker that
    scored every window and one that scores only the last of the block compute the same."""
    history = _history(20, minutes=300)
    block = refresh_block(history[-1].start, 60)
    assert block <= history[-1].start < block + timedelta(minutes=REFRESH_WINDOWS)
    assert [w.start for w in windows_before(history, block)] == [w.start for w in history if w.start < block]
    assert windows_before(history, history[-1].start + timedelta(minutes=1)) is history  # all of it, not copied
    first = Baseline.from_history(windows_before(history[: history.index(next(w for w in history if w.start >= block)) + 1], block), block)
    assert first == Baseline.from_history(windows_before(history, block), block)


def test_silent_lapse_two_close_together_where_lapses_are_rare() -> None:
    history = _history(20)
    spread = [*history, _next(history, events=20, lapses=1)]
    for _ in range(19):
        spread.append(_next(spread, events=20))
    assert _run(silent_lapse, spread, _next(spread, events=20, lapses=1)) is None  # 20 minutes apart: ordinary dunning
    close = [*history, _next(history, events=20, lapses=1)]
    close.append(_next(close, events=20))
    finding = _run(silent_lapse, close, _next(close, events=20, lapses=1))
    assert finding is not None and finding.features["lapses"] == 2 and finding.features["horizon_windows"] == 5


def test_silent_lapse_relative_to_the_tenants_usual_lapses() -> None:
    usual = [replace(w, lapses=int(i % 20 == 0)) for i, w in enumerate(_history(200))]  # a lapse every 20 minutes
    assert _run(silent_lapse, usual, _next(usual, events=200, lapses=2)) is None
    finding = _run(silent_lapse, usual, _next(usual, events=200, lapses=6))
    assert finding is not None and finding.features["horizon_windows"] == 1


def test_silent_lapse_usual_rate_from_the_whole_history() -> None:
    history = [replace(w, lapses=int(i % 60 == 0 and i < 1200)) for i, w in enumerate(_history(20))]  # hourly, none lately
    assert Baseline.from_history(history, history[-1].start).lapses.mean == 0
    windows = [*history, _next(history, events=20, lapses=1)]
    for _ in range(5):
        windows.append(_next(windows, events=20))
    assert _run(silent_lapse, windows, _next(windows, events=20, lapses=1)) is None  # two in six minutes: routine here
    assert _run(silent_lapse, windows, _next(windows, events=20, lapses=6)) is not None


def test_duplicate_flood_expects_more_resends_as_traffic_rises() -> None:
    history = _history(20)  # re-sends at 0.3 % of events
    assert _run(duplicate_flood, history, _next(history, events=200, duplicates=4)) is None  # ten times the traffic
    assert _run(duplicate_flood, history, _next(history, events=20, duplicates=4)) is not None
    assert _run(duplicate_flood, history, _next(history, events=200, duplicates=30)) is not None


def test_duplicate_flood_relative_to_usual_retries() -> None:
    history = _history(100)
    assert _run(duplicate_flood, history, _next(history, events=100, duplicates=2)) is None
    finding = _run(duplicate_flood, history, _next(history, events=100, duplicates=30))
    assert finding is not None and finding.kind == "duplicate_flood" and finding.features["duplicate_flood"] == 30


def test_webhook_lag_needs_more_than_one_retried_event() -> None:
    history = _history(1)
    windows = list(history)
    for lag in (900.0, 920.0):  # two retried events in a row: still no evidence of a backlog
        window = _next(windows, events=1, lag_p50=lag, lag_max=lag)
        assert _run(webhook_lag, windows, window) is None
        windows += [window, _next([window], events=0)]
    finding = _run(webhook_lag, windows, _next(windows, events=1, lag_p50=950.0, lag_max=950.0))
    assert finding is not None and finding.kind == "webhook_lag" and "p50 950 s" in finding.explanation[0]
    assert finding.features["lagged_windows"] == 3
    busy = _history(50)
    assert _run(webhook_lag, busy, _next(busy, events=50, lag_p50=120.0, lag_max=300.0)) is not None


def test_webhook_lag_at_a_slow_tenant_adds_up_lagged_events_far_apart() -> None:
    """Three late events 35 and 40 minutes apart at a tenant of a few events an hour, nothing in between."""
    windows = list(_history(0.05))
    for quiet, lag in ((0, 300.0), (35, 650.0), (40, 900.0)):
        for _ in range(quiet):
            windows.append(_next(windows, events=0))
        windows.append(_next(windows, events=1, lag_p50=lag, lag_max=lag))
    finding = _run(webhook_lag, windows[:-1], windows[-1])
    assert finding is not None and finding.features["lagged_events"] == 3
    windows.append(_next(windows, events=1, lag_p50=1.0, lag_max=1.0))  # an event on time ends the streak
    assert _run(webhook_lag, windows[:-1], windows[-1]) is None
    stop = list(_history(50))  # a busy tenant stopped: three late retries over an hour are not a backlog
    for _ in range(3):
        for _ in range(19):
            stop.append(_next(stop, events=0))
        stop.append(_next(stop, events=1, lag_p50=1800.0, lag_max=1800.0))
    assert _run(webhook_lag, stop[:-1], stop[-1]) is None


def test_webhook_lag_from_ten_seconds() -> None:
    history = _history(50)
    assert _run(webhook_lag, history, _next(history, events=50, lag_p50=8.0, lag_max=12.0)) is None
    assert _run(webhook_lag, history, _next(history, events=50, lag_p50=15.0, lag_max=20.0)) is not None


def test_webhook_lag_not_from_the_late_retries_of_a_stop() -> None:
    history = _history(50)
    windows = list(history)
    for _ in range(3):  # traffic stopped; a retried event from before the stop arrives now and then
        windows.append(_next(windows, events=1, lag_p50=1800.0, lag_max=1800.0))
        windows.append(_next(windows, events=0))
    assert _run(webhook_lag, windows[:-1], windows[-1]) is None
    windows = list(history)
    for _ in range(3):  # a backlog: most of the traffic arrives, late
        windows.append(_next(windows, events=30, lag_p50=600.0, lag_max=900.0))
    assert _run(webhook_lag, windows[:-1], windows[-1]) is not None


def test_detect_reports_a_backlog_as_lag_not_as_a_volume_drop() -> None:
    history = _history(50)
    windows = list(history)
    for _ in range(3):  # a backlog starting: few events arrive, all late
        windows.append(_next(windows, events=6, lag_p50=300.0, lag_max=400.0))
    baseline = Baseline.from_history(windows[:-1], windows[-1].start)
    recent = [*windows[-RECENT_WINDOWS:]]
    assert volume_drop(recent, baseline, DEFAULTS) is not None  # the rule alone sees the missing events
    kinds = [f.kind for f in detect(windows[-1], windows[:-1], DEFAULTS, None)]
    assert kinds == ["webhook_lag"]


def test_negative_invoice_and_large_refund() -> None:
    history = _history(20)
    assert _run(negative_invoice, history, _next(history, events=20, refunds=1, max_refund=4000, negative_amount=4000)) is None
    refund = _run(negative_invoice, history, _next(history, events=20, refunds=1, max_refund=900_000, negative_amount=900_000))
    assert refund is not None and refund.severity == "critical"
    credit = _run(negative_invoice, history, _next(history, events=20, negative_amount=80_000))
    assert credit is not None and credit.kind == "negative_invoice"


def _amounts(history: list[Window], scale: float) -> list[Window]:
    """The same history with every refund `scale` times as large."""
    return [replace(w, max_refund=int(w.max_refund * scale), negative_amount=int(w.negative_amount * scale)) for w in history]


def test_negative_invoice_limit_is_ten_times_the_tenants_own_p90() -> None:
    cheap = _amounts(_history(20), 0.1)  # refunds of 50-500: p90 about 455
    p90 = Baseline.from_history(cheap, cheap[-1].start).refund_p90
    assert p90 is not None and 400 <= p90 < 500
    assert _run(negative_invoice, cheap, _next(cheap, refunds=1, max_refund=int(9.9 * p90), negative_amount=int(9.9 * p90))) is None
    refund = _run(negative_invoice, cheap, _next(cheap, refunds=1, max_refund=int(10.1 * p90), negative_amount=int(10.1 * p90)))
    assert refund is not None and refund.kind == "negative_invoice"  # far under the 50,000 floor
    credit = _run(negative_invoice, cheap, _next(cheap, negative_amount=int(10.1 * p90)))
    assert credit is not None
    dear = _amounts(_history(20), 10)  # refunds up to 50,000: the floor does not apply either
    dear_p90 = Baseline.from_history(dear, dear[-1].start).refund_p90
    assert dear_p90 is not None
    assert _run(negative_invoice, dear, _next(dear, refunds=1, max_refund=int(9.9 * dear_p90), negative_amount=int(9.9 * dear_p90))) is None
    assert _run(negative_invoice, dear, _next(dear, refunds=1, max_refund=int(10.1 * dear_p90), negative_amount=int(10.1 * dear_p90))) is not None


def test_an_earlier_large_refund_does_not_hide_the_next() -> None:
    """An incident's refund lands in two windows (``charge.refunded``, then ``refund.created``): at a
    slow tenant with a few dozen refund windows those two are its top few per cent, which a p99
    would have become, raising the limit five-fold for the rest of the week."""
    history = _history(20)
    earlier = len(history) // 2
    history[earlier : earlier + 2] = [replace(w, refunds=1, max_refund=100_000, negative_amount=100_000) for w in history[earlier : earlier + 2]]
    assert sum(1 for w in history if w.max_refund) < 100
    assert _run(negative_invoice, history, _next(history, events=20, refunds=1, max_refund=100_000, negative_amount=100_000)) is not None


def test_one_large_credit_stands_out_at_a_busy_tenant_whose_refunds_fill_every_window() -> None:
    """Several ordinary refunds a minute make the windows' negative sums large and varied; one
    credit note twelve times the usual credit hides in the sum and not against the tenant's credits."""
    rng = np.random.default_rng(1)
    history = []
    for window in _history(200):
        refunds = [int(a) for a in rng.integers(1000, 20_000, size=int(rng.poisson(4)))]
        credit = int(rng.integers(1000, 10_000)) if rng.random() < 0.3 else 0
        history.append(replace(window, refunds=len(refunds), max_refund=max(refunds, default=0), max_credit=credit,
                               negative_amount=sum(refunds) + credit))
    baseline = Baseline.from_history(history, history[-1].start)
    assert baseline.negative_p90 is not None and baseline.credit_p90 is not None
    large = 12 * int(baseline.credit_p90)
    assert large < 10 * baseline.negative_p90  # the sum alone would not see it
    finding = _run(negative_invoice, history, _next(history, events=200, max_credit=large, negative_amount=large + 30_000))
    assert finding is not None and finding.features["max_credit"] == large
    ordinary = 8 * int(baseline.credit_p90)
    assert _run(negative_invoice, history, _next(history, events=200, max_credit=ordinary, negative_amount=ordinary + 30_000)) is None


def test_before_its_refunds_a_tenants_charges_are_the_scale() -> None:
    """A cheap product's first large refund: no refund history yet, ten times its usual charge,
    far under the absolute floor."""
    history = [replace(w, max_charge=2000 if w.charge_succeeded else 0) for w in _amounts(_history(20), 0)]
    baseline = Baseline.from_history(history, history[-1].start)
    assert baseline.refund_p90 is None and baseline.charge_p90 == 2000
    assert _run(negative_invoice, history, _next(history, events=20, refunds=1, max_refund=19_000, negative_amount=19_000)) is None
    refund = _run(negative_invoice, history, _next(history, events=20, refunds=1, max_refund=21_000, negative_amount=21_000))
    assert refund is not None and refund.kind == "negative_invoice"


def test_negative_invoice_floor_only_without_amount_history() -> None:
    history = _amounts(_history(20), 0)  # no refund ever and no charge amount: no scale
    assert Baseline.from_history(history, history[-1].start).refund_p90 is None
    assert _run(negative_invoice, history, _next(history, refunds=1, max_refund=40_000, negative_amount=40_000)) is None
    assert _run(negative_invoice, history, _next(history, negative_amount=60_000)) is not None


def test_volume_drop_full_stop_and_partial() -> None:
    history = _history(50)
    windows = list(history)
    assert _run(volume_drop, windows, _next(windows, events=0)) is not None  # 50/minute to nothing
    slow = _history(0.5)
    assert _run(volume_drop, slow, _next(slow, events=0)) is None  # one empty minute is normal at 30/hour
    for _ in range(60):
        slow.append(_next(slow, events=0))
    finding = _run(volume_drop, slow[:-1], slow[-1])
    assert finding is not None and finding.features["events"] == 0 and finding.features["horizon_windows"] >= 30
    partial = [*history, *[_next(history, events=5)]]
    assert _run(volume_drop, partial[:-1], partial[-1]) is not None


def test_volume_drop_at_a_slow_tenant_is_not_its_own_baseline() -> None:
    """Two hours of nothing at 7 events/hour: the recent baseline (four hours ending half an
    hour ago) is by then mostly the drop itself, so the expected rate comes from yesterday."""
    quiet = [Window("t", T0 + timedelta(minutes=m), 60, events=int(m % 9 == 0)) for m in range(1500 + 120)]
    windows = [*quiet[:1500], *[replace(w, events=0) for w in quiet[1500:]]]
    baseline = Baseline.from_history(windows[:-1], windows[-1].start)
    assert baseline.events.mean < 0.65 * baseline.seasonal_events  # the drop is inside the recent slice
    finding = volume_drop(windows[-RECENT_WINDOWS:], baseline, DEFAULTS)
    assert finding is not None and finding.features["events"] == 0
    assert finding.features["expected_events"] == pytest.approx(finding.features["horizon_windows"] / 9, rel=0.1)
    assert volume_drop(quiet[-RECENT_WINDOWS:], Baseline.from_history(quiet[:-1], quiet[-1].start), DEFAULTS) is None


def test_volume_drop_keeps_the_recent_rate_where_yesterday_was_busier() -> None:
    """A Saturday after a Friday twice as busy, with a burst of injected requests an hour ago: a quiet
    stretch is judged against today's own rate before the horizon, not against Friday's."""
    friday = [int(m % 5 < 4) for m in range(1440)]  # 0.8 a minute
    saturday = [int(m % 5 < 2) for m in range(360)]  # 0.4 a minute...
    saturday[260:280] = [3] * 20  # ...a burst an hour before the horizon...
    saturday[320:] = [int(m % 5 == 0) for m in range(40)]  # ...and the last 40 minutes at 0.2, as happens
    windows = [Window("t", T0 + timedelta(minutes=m), 60, events=e) for m, e in enumerate(friday + saturday)]
    baseline = Baseline.from_history(windows[:-1], windows[-1].start)
    assert baseline.seasonal_events == pytest.approx(0.8, rel=0.05)
    assert volume_drop(windows[-RECENT_WINDOWS:], baseline, DEFAULTS) is None
    saturday[320:] = [0] * 40  # nothing at all for 40 minutes is a drop even so
    windows = [Window("t", T0 + timedelta(minutes=m), 60, events=e) for m, e in enumerate(friday + saturday)]
    assert volume_drop(windows[-RECENT_WINDOWS:], Baseline.from_history(windows[:-1], windows[-1].start), DEFAULTS) is not None


def test_volume_drop_without_a_day_of_history_uses_the_recent_rate() -> None:
    windows = _history(50, minutes=600)
    baseline = Baseline.from_history(windows, windows[-1].start + timedelta(minutes=1))
    assert baseline.seasonal_events is None
    finding = volume_drop([*windows[-(RECENT_WINDOWS - 1) :], _next(windows, events=0)], baseline, DEFAULTS)
    assert finding is not None and finding.features["expected_events"] == pytest.approx(baseline.events.mean, rel=0.05)


def test_volume_drop_uses_yesterday_as_the_seasonal_reference() -> None:
    history = _history(50, minutes=1500)
    baseline = Baseline.from_history(history, history[-1].start + timedelta(minutes=1))
    assert baseline.seasonal_events == pytest.approx(50, rel=0.1)
    assert Baseline.from_history(history[:600], history[600].start).seasonal_events is None


def test_bad_signature_probe() -> None:
    history = _history(20)
    assert _run(bad_signature, history, _next(history, events=20, bad_signatures=1)) is None
    finding = _run(bad_signature, history, _next(history, events=20, bad_signatures=12))
    assert finding is not None and finding.kind == "bad_signature"


def test_detect_returns_one_finding_per_kind_with_history_of_a_week() -> None:
    history = _history(20, minutes=7 * 1440)
    window = _next(history, events=60, charge_failed=30, failed_cards=30, failed_customers=1, bad_signatures=40, duplicates=50)
    findings = detect(window, history, DEFAULTS, None)
    assert sorted(f.kind for f in findings) == ["bad_signature", "card_testing", "duplicate_flood"]
    assert all(f.explanation and 0 < f.score <= 1 for f in findings)
    assert detect(_next(history, events=20), history, DEFAULTS, None) == []
    assert detect(window, history, DEFAULTS, None, rules=False) == []
