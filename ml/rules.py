"""Rule detectors: the incidents a per-window model explains badly, each with explicit thresholds.

Count rules look at the current window and at short trailing sums ("horizons"), because a slow
tenant's incident only becomes significant over several windows. Significance is a surprise in
nats against the tenant's own baseline (``ml.surprise``), plus a minimum count so that a tenant
with no history cannot alert on a single event. A k-window horizon needs ``ln k`` nats less than
one window (``needed``): it has about 1/k as many independent chances a day to fire by luck, so
the false-alarm rate per day stays the same while a slow tenant's evidence counts sooner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import accumulate

from ml.baseline import (
    CARDS_PER_CUSTOMER,
    GAP_WINDOWS,
    SPAN_WINDOWS,
    Baseline,
    Stat,
    card_excess,
    card_testing_like,
    payment_attempts,
    payment_failures,
)
from ml.features import Window
from ml.findings import Finding
from ml.surprise import binomial_excess, poisson_deficit, poisson_excess, to_score

_DROP_HORIZON = 240  # the longest horizon (windows)
_DROP_FLOOR = 0.8  # least fraction of `drop_surprise` a long horizon needs
_DROP_REFERENCE = 60  # windows before a volume-drop horizon that serve as its local reference
_FAILURE_HORIZONS = frozenset((*range(1, 11), 15, 30, 60, 120, 240))
_FAILURE_LONGEST = max(_FAILURE_HORIZONS)
_LAPSE_HORIZONS = (1, 5, 15, 30)  # capped at `lapse_horizon_windows`
_LAG_SPAN = 120  # windows a streak of lagged windows may span (empty ones included): a slow tenant's events are minutes apart
RECENT_WINDOWS = _DROP_HORIZON + _DROP_REFERENCE + 1  # what the rules look at, the current window included


@dataclass(frozen=True)
class Thresholds:
    surprise: float = 12.0  # nats (~6e-6) a count rule needs against the tenant's baseline
    critical_factor: float = 3.0  # surprise this many times the threshold: severity "critical"
    card_testing_min_cards: float = 3.0  # failed cards beyond one per failing customer, over a horizon
    card_testing_cards_per_customer: float = CARDS_PER_CUSTOMER
    failure_min_failures: float = 4.0
    failure_min_ratio: float = 0.3  # charge failure ratio, and at least `failure_ratio_multiplier` x the typical one
    failure_ratio_multiplier: float = 3.0
    failure_floor_rate: float = 0.02  # typical failure ratio assumed when history has (almost) none
    lapse_min: float = 2.0  # lapses within `lapse_horizon_windows`
    lapse_horizon_windows: float = 30.0
    lapse_floor_rate: float = 1 / 2880  # lapses per window assumed when history has none (one every two days)
    duplicate_min: float = 4.0
    lag_seconds: float = 10.0  # lag_p50 at least this, and `lag_multiplier` x the typical p50
    lag_multiplier: float = 10.0
    lag_min_events: float = 3.0  # lagged events in the current streak of lagged windows
    lag_min_share: float = 0.05  # ...and at least this fraction of the events expected over the streak
    # Floors (minor units) for a refund, and for a credit or the window's negative sum, used only
    # while the tenant has neither ten windows of that amount nor ten of charges (`_amount_limit`).
    large_refund_min: float = 50_000.0
    negative_amount_min: float = 50_000.0
    amount_multiplier: float = 10.0  # x the tenant's own p90 once it has one (about 5x an ordinary p99)
    drop_ratio: float = 0.25  # observed at most this fraction of expected events
    drop_surprise: float = 14.0
    bad_signature_min: float = 5.0

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, float] | None) -> Thresholds:
        """The defaults with a tenant's overrides; ValueError names an unknown or out-of-range one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides or {}) - known)
        if unknown:
            raise ValueError(f"unknown threshold(s): {', '.join(unknown)}")
        values = {name: float(value) for name, value in (overrides or {}).items()}
        if wrong := [f"{name} {_RANGES.get(name, _POSITIVE)[1]}" for name, value in values.items() if not _in_range(name, value)]:
            raise ValueError(f"out of range: {', '.join(wrong)}")
        return replace(cls(), **values)


# What each threshold may be; any other is a positive number. A zero horizon or a negative minimum
# count would divide by zero, or alert on every window.
_Range = tuple[Callable[[float], bool], str]
_POSITIVE: _Range = (lambda v: v > 0, "must be a positive number")
_COUNT: _Range = (lambda v: v >= 1, "must be at least 1")
_FRACTION: _Range = (lambda v: 0 < v <= 1, "must be above 0 and at most 1")
_RANGES: dict[str, _Range] = {
    **dict.fromkeys(
        ("card_testing_min_cards", "failure_min_failures", "lapse_min", "duplicate_min", "lag_min_events", "bad_signature_min"), _COUNT
    ),
    **dict.fromkeys(("failure_min_ratio", "failure_floor_rate", "lag_min_share", "drop_ratio"), _FRACTION),
    "critical_factor": _COUNT,
    **dict.fromkeys(("large_refund_min", "negative_amount_min"), (lambda v: v >= 1, "must be at least 1 (minor units)")),
    "lag_seconds": (lambda v: v >= 1, "must be at least 1 (seconds)"),
    # Longer horizons would count lapses the baseline (which ends GAP_WINDOWS ago) already counts as usual.
    "lapse_horizon_windows": (lambda v: 1 <= v <= GAP_WINDOWS and v.is_integer(), f"must be a whole number of windows, 1 to {GAP_WINDOWS}"),
}


def _in_range(name: str, value: float) -> bool:
    return math.isfinite(value) and _RANGES.get(name, _POSITIVE)[0](value)


Rule = Callable[[Sequence[Window], Baseline, Thresholds], "Finding | None"]


def card_testing(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """Many distinct cards failing for few customers: someone testing stolen cards."""
    best = None
    for k in (1, 3, 5):
        span = recent[-k:]
        excess = sum(card_excess(w) for w in span)
        cards = sum(w.failed_cards for w in span)
        customers = sum(w.failed_customers for w in span)
        if excess < t.card_testing_min_cards or cards < t.card_testing_cards_per_customer * max(1, customers):
            continue
        surprise = poisson_excess(excess, max(baseline.card_excess.mean, 0.01) * k) / baseline.card_excess.dispersion
        if _better(surprise, needed(t.surprise, k), best):
            best = (surprise, needed(t.surprise, k), k, cards, customers)
    if best is None:
        return None
    surprise, threshold, k, cards, customers = best
    return _finding(
        "card_testing",
        surprise,
        threshold,
        t,
        [f"{cards} distinct cards failed for {customers} customers{_over(k)}", _typical("failed cards", baseline.card_excess, k)],
        {"failed_cards": cards, "failed_customers": customers, "horizon_windows": k},
    )


def failure_spike(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """Payment failure ratio far above the tenant's usual, tested as a binomial so small volumes need more evidence.

    Payments are charges and payment intents (``payment_failures``): an outage fails both, and a
    slow tenant's intents are as much evidence as its charges.

    A horizon with a card-testing window in it is skipped: those failures have a rule of their own,
    and the attacker's single attempts around the burst would otherwise read as a failure spike.
    So is one whose failures fall on far fewer distinct customers than the tenant's usual share
    (under half of it): an outage fails ordinary customers, a card tester is one customer (or none).
    A horizon whose newer half has charges but not the failure ratio is skipped: a long horizon
    still holding an outage that has ended is not news, and would re-open it. Horizons are dense
    up to ten windows, where a mid-volume tenant's outage becomes significant.
    """
    typical = max(baseline.failure_rate, t.failure_floor_rate)
    min_ratio = max(t.failure_min_ratio, t.failure_ratio_multiplier * typical)
    share = baseline.failing_customer_share
    best = None
    failed, attempts, charge_failed, customers = [0], [0], [0], [0]  # over the newest k windows, k = 0, 1, ...
    for k, window in enumerate(reversed(recent[-_FAILURE_LONGEST:]), start=1):
        if card_testing_like(window, t.card_testing_cards_per_customer):
            break  # every longer horizon holds this window too
        failed.append(failed[-1] + payment_failures(window))
        attempts.append(attempts[-1] + payment_attempts(window))
        charge_failed.append(charge_failed[-1] + window.charge_failed)
        customers.append(customers[-1] + window.failed_customers)
        if k not in _FAILURE_HORIZONS or failed[k] < t.failure_min_failures or failed[k] < attempts[k] * min_ratio:
            continue
        if failed[k // 2] < attempts[k // 2] * min_ratio:
            continue  # over: the newer half is back to normal
        if share is not None and customers[k] < 0.5 * share * charge_failed[k]:
            continue  # a few customers failing many times: card testing, not an outage
        surprise = binomial_excess(failed[k], attempts[k], typical) / baseline.payment_failures.dispersion
        if _better(surprise, needed(t.surprise, k), best):
            best = (surprise, needed(t.surprise, k), k, failed[k], attempts[k], charge_failed[k])
    if best is None:
        return None
    surprise, threshold, k, failed, attempts, charges_failed = best
    return _finding(
        "failure_spike",
        surprise,
        threshold,
        t,
        [
            f"{failed} of {attempts} payments failed ({failed / attempts:.0%}; charge.failed {charges_failed}, "
            f"payment_intent.payment_failed {failed - charges_failed}){_over(k)} vs typical {typical:.0%}"
        ],
        {
            "payment_failures": failed,
            "payment_attempts": attempts,
            "charge_failed": charges_failed,
            "failure_ratio": failed / attempts,
            "horizon_windows": k,
        },
    )


def silent_lapse(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """Subscriptions deleted after failed invoice payments, in a cluster the tenant does not usually see.

    The usual rate is the higher of the recent one and the whole history's: four hours of a tenant
    whose lapses come every hour or two can hold none, and two close together are then routine.
    """
    rate = max(baseline.lapses.mean, baseline.lapse_rate, t.lapse_floor_rate)
    best = None
    for k in _LAPSE_HORIZONS:
        k = min(k, int(t.lapse_horizon_windows))
        lapses = sum(w.lapses for w in recent[-k:])
        if lapses < t.lapse_min:
            continue
        surprise = poisson_excess(lapses, rate * k)
        if _better(surprise, needed(t.surprise, k), best):
            best = (surprise, needed(t.surprise, k), k, lapses)
    if best is None:
        return None
    surprise, threshold, k, lapses = best
    return _finding(
        "silent_lapse",
        surprise,
        threshold,
        t,
        [f"{lapses} subscriptions deleted after invoice.payment_failed{_over(k)}", _typical("lapses", baseline.lapses, k)],
        {"lapses": lapses, "horizon_windows": k},
    )


def duplicate_flood(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """The same events re-sent far more than provider retries explain.

    Provider re-sends are a share of the events sent, so the expected count follows the events of
    the horizon at the baseline's duplicate share: a busy tenant's morning rise brings more
    re-sends than its night-time baseline holds.
    """
    stat = baseline.duplicates
    share = stat.mean / baseline.events.mean if baseline.events.mean > 0 else 0.0
    return _count_rule(
        "duplicate_flood",
        "duplicate deliveries",
        recent,
        lambda w: w.duplicates,
        stat,
        (1, 3, 5),
        t.duplicate_min,
        t,
        lambda k: max(stat.mean * k, share * sum(w.events for w in recent[-k:])),
    )


def bad_signature(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """Requests with failing signatures: someone probing the ingest URL, or a leaked/rotated secret."""
    return _count_rule(
        "bad_signature",
        "bad signatures",
        recent,
        lambda w: w.bad_signatures,
        baseline.bad_signatures,
        (1, 5, 15),
        t.bad_signature_min,
        t,
    )


def webhook_lag(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """Events arriving long after Stripe created them, for more than a stray retry.

    Evidence is the current streak of lagged windows, empty ones skipped (they say nothing about
    lag), holding at least `lag_min_events` lagged events (half of each window's, as its median is
    lagged). A retried event is lagged too, but alone. The streak may span ``_LAG_SPAN`` windows:
    at a tenant of a few events an hour the third lagged event can come an hour after the first,
    and a shorter span forgot the first before the third arrived. The lagged events must also be at least
    `lag_min_share` of the traffic expected over the streak: when traffic has stopped, the only
    arrivals are the late retries of events sent before it, and that is a volume drop, not a backlog.
    """
    limit = max(t.lag_seconds, t.lag_multiplier * baseline.lag_p50)
    span = recent[-_LAG_SPAN:]
    streak = lagged = 0
    first = len(span)  # index in `span` of the oldest window of the streak
    for i in range(len(span) - 1, -1, -1):
        window = span[i]
        if window.lag_p50 is None:
            continue
        if window.lag_p50 < limit:
            break
        streak += 1
        lagged += (window.events + 1) // 2
        first = i
    if lagged < t.lag_min_events or lagged < t.lag_min_share * baseline.expected_events * (len(span) - first):
        return None
    newest = next(w for w in reversed(span) if w.lag_p50 is not None)
    p50, lag_max = newest.lag_p50 or 0.0, newest.lag_max or 0.0
    ratio = p50 / limit
    return Finding(
        detector="webhook_lag",
        kind="webhook_lag",
        severity="critical" if ratio >= 10 else "warning",
        score=_ratio_score(ratio),
        explanation=[f"webhook lag p50 {p50:.0f} s (max {lag_max:.0f} s) vs typical {baseline.lag_p50:.0f} s"],
        features={"lag_p50": p50, "lag_max": lag_max, "lagged_windows": streak, "lagged_events": lagged},
    )


def negative_invoice(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """A refund or negative amount (credit, negative invoice) far beyond anything the tenant usually issues.

    Each of three amounts has its limit: the largest refund, the largest credit (a negative amount
    that is not a refund), and the window's sum of negative amounts. At a busy tenant the sum holds
    tens of ordinary refunds, so one credit note 60x the typical charge stayed under the limit;
    against the tenant's single credits it stands out. The limit is `amount_multiplier` x the
    tenant's own p90 (``Baseline``: an earlier incident does not raise it) as soon as it has one
    (10 windows with such amounts): an absolute floor above it hid a cheap product's incidents.
    Until then the scale is the p90 of the windows' largest charge (a refund is at most a charge),
    and the floor stands only for a tenant that has not charged ten times either.
    """
    window = recent[-1]
    refund_limit = _amount_limit(baseline.refund_p90, baseline.charge_p90, t.large_refund_min, t)
    credit_limit = _amount_limit(baseline.credit_p90, baseline.charge_p90, t.negative_amount_min, t)
    negative_limit = _amount_limit(baseline.negative_p90, baseline.charge_p90, t.negative_amount_min, t)
    ratio = max(window.max_refund / refund_limit, window.max_credit / credit_limit, window.negative_amount / negative_limit)
    if ratio < 1:
        return None
    return Finding(
        detector="negative_invoice",
        kind="negative_invoice",
        severity="critical" if ratio >= t.critical_factor else "warning",
        score=_ratio_score(ratio),
        explanation=[
            f"largest refund {window.max_refund / 100:,.2f} vs limit {refund_limit / 100:,.2f}",
            f"largest credit {window.max_credit / 100:,.2f} vs limit {credit_limit / 100:,.2f}",
            f"negative amounts {window.negative_amount / 100:,.2f} vs limit {negative_limit / 100:,.2f}",
        ],
        features={"max_refund": window.max_refund, "max_credit": window.max_credit, "negative_amount": window.negative_amount},
    )


def volume_drop(recent: Sequence[Window], baseline: Baseline, t: Thresholds) -> Finding | None:
    """Far fewer events than expected, over the trailing horizon where that is most significant.

    Expected is the lowest of three rates: the same hour yesterday, the recent rate (the
    baseline's four hours ending half an hour ago), and the hour just before the horizon, which
    follows shifts the daily reference cannot know about (the first weekend, a holiday). No
    reference may overlap the horizon it judges: the recent rate is taken over the part of the
    four hours that ends before the horizon starts (a drop that has lasted over half an hour is
    inside those four hours, and became its own baseline before it was significant at a slow
    tenant), and is left out when under an hour of it remains. Long horizons get less of the
    horizon discount (``_DROP_FLOOR``): the expected count is itself an estimate, and its error
    grows with the horizon where a count rule's baseline error does not.
    """
    seasonal = baseline.seasonal_events
    if max(seasonal or 0.0, baseline.events.mean) <= 0 or baseline.windows < 2 * 60:
        return None
    threshold = t.drop_surprise if seasonal is not None else 2 * t.drop_surprise  # no seasonal reference yet
    prefix = list(accumulate((w.events for w in recent), initial=0))
    n = len(recent)
    usual_end = n - 1 - GAP_WINDOWS  # the baseline's slice in `recent` (the current window is the last)
    usual_start = max(0, usual_end - SPAN_WINDOWS)
    best = None
    for k in range(1, min(n, _DROP_HORIZON) + 1):
        observed = prefix[n] - prefix[n - k]
        end = min(usual_end, n - k)
        usual = (prefix[end] - prefix[usual_start]) / (end - usual_start) if end - usual_start >= _DROP_REFERENCE else None
        rate = min((r for r in (seasonal, usual) if r is not None), default=baseline.events.mean)
        before = min(_DROP_REFERENCE, n - k)
        reference = (prefix[n - k] - prefix[n - k - before]) / before if before >= _DROP_REFERENCE // 2 else rate
        expected = k * min(rate, reference)
        if observed > expected:  # volume is back: an older quiet stretch is not this window's news
            break
        if observed > t.drop_ratio * expected:
            continue
        surprise = poisson_deficit(observed, expected) / baseline.events.dispersion
        if _better(surprise, needed(threshold, k, _DROP_FLOOR), best):
            best = (surprise, needed(threshold, k, _DROP_FLOOR), k, observed, expected)
    if best is None:
        return None
    surprise, threshold, k, observed, expected = best
    return _finding(
        "volume_drop",
        surprise,
        threshold,
        t,
        [f"{observed} events{_over(k)} vs typical {expected:.0f}"],
        {"events": observed, "expected_events": expected, "horizon_windows": k},
    )


RULES: tuple[Rule, ...] = (
    card_testing,
    failure_spike,
    silent_lapse,
    duplicate_flood,
    webhook_lag,
    negative_invoice,
    volume_drop,
    bad_signature,
)


def _ratio_score(ratio: float) -> float:
    """How far past its limit a value is, as 0.5 (at it) to 1; an infinite ratio is 1, not NaN."""
    return 1.0 if math.isinf(ratio) else ratio / (ratio + 1)


def needed(threshold: float, k: int, floor: float = 0.5) -> float:
    """Surprise a k-window horizon needs: ``ln k`` less than one window (see the module docstring), at least ``floor`` of it."""
    return max(floor * threshold, threshold - math.log(k))


def _better(surprise: float, threshold: float, best: tuple[float, float, *tuple[object, ...]] | None) -> bool:
    """Significant, and further past its own threshold than the best horizon so far."""
    return surprise >= threshold and (best is None or surprise / threshold > best[0] / best[1])


def _amount_limit(scale: float | None, charges: float | None, floor: float, t: Thresholds) -> float:
    """``amount_multiplier`` x the amount's own scale; before it has one, x what the tenant charges
    (a refund is at most a charge); before that, the floor."""
    scale = charges if scale is None else scale
    return floor if scale is None else t.amount_multiplier * scale


def _count_rule(
    kind: str,
    label: str,
    recent: Sequence[Window],
    metric: Callable[[Window], int],
    stat: Stat,
    horizons: tuple[int, ...],
    minimum: float,
    t: Thresholds,
    expected: Callable[[int], float] | None = None,
) -> Finding | None:
    """Poisson excess of ``metric`` over each horizon; ``expected(k)`` defaults to the baseline mean x k."""
    best = None
    for k in horizons:
        count = sum(metric(w) for w in recent[-k:])
        if count < minimum:
            continue
        surprise = poisson_excess(count, max(expected(k) if expected else stat.mean * k, 0.01 * k)) / stat.dispersion
        if _better(surprise, needed(t.surprise, k), best):
            best = (surprise, needed(t.surprise, k), k, count)
    if best is None:
        return None
    surprise, threshold, k, count = best
    return _finding(
        kind,
        surprise,
        threshold,
        t,
        [f"{label} {count}{_over(k)}", _typical(label, stat, k)],
        {kind: count, "horizon_windows": k},
    )


def _finding(
    kind: str, surprise: float, threshold: float, t: Thresholds, explanation: list[str], features: dict[str, float]
) -> Finding:
    return Finding(
        detector=kind,
        kind=kind,
        severity="critical" if surprise >= t.critical_factor * threshold else "warning",
        score=to_score(surprise, threshold),
        explanation=explanation,
        features={**features, "surprise": surprise},
    )


def _over(k: int) -> str:
    return "" if k == 1 else f" over the last {k} windows"


def _typical(label: str, stat: Stat, k: int) -> str:
    return f"typical {label} {stat.mean * k:.1f}±{stat.sd * k**0.5:.1f} per {k} window{'s' if k > 1 else ''}"
