"""What "typical" means for one tenant right now, from its trailing windows.

The rate statistics come from a bounded slice (four hours) that ends half an hour before now: an
incident that just started must not become its own baseline, and a bounded slice keeps the cost
independent of how much history the caller passes. Amount scales (refunds, negative amounts) and
the charge failure rate use the whole history (up to the same half hour before now), because they
are rare: four hours of a slow tenant hold a handful of charges and no failure (the lapse rate and
the share of failures that are distinct customers likewise). The expected volume is seasonal: the same hour one day
earlier, when the history reaches that far.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from ml.features import Window
from ml.surprise import binomial_excess

GAP_WINDOWS = 30
SPAN_WINDOWS = 240
REFRESH_WINDOWS = 15  # a baseline moves slowly: one per block of this many windows (a third of the CPU)
CARDS_PER_CUSTOMER = 3.0  # failed cards per failing customer that make a window card testing (``Thresholds`` default)
_MIN_FAILURES = 20  # fewer failed charges than this: no customer share, the failure rule does not use it
_MIN_AMOUNTS = 10  # fewer non-zero amounts than this: no amount scale, rules use their floors
_RATE_BLOCK = 60  # windows per block when leaving outages out of the typical failure rate
_INCIDENT_NATS = 12.0  # a block whose failures are this surprising against the rest of the history is an outage


@dataclass(frozen=True)
class Stat:
    mean: float = 0.0
    var: float = 0.0

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)

    @property
    def dispersion(self) -> float:
        """Variance over mean (1 for Poisson); surprises are divided by it so bursty metrics are not over-trusted."""
        return max(1.0, self.var / self.mean) if self.mean > 0 else 1.0

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """Mean, and variance from successive differences: the daily curve within the slice is not noise."""
        if not values:
            return cls()
        mean = sum(values) / len(values)
        if len(values) < 2:
            return cls(mean, 0.0)
        return cls(mean, sum((b - a) ** 2 for a, b in pairwise(values)) / (2 * (len(values) - 1)))


@dataclass(frozen=True)
class Baseline:
    windows: int = 0  # how many windows the rate statistics come from
    events: Stat = Stat()
    payment_failures: Stat = Stat()  # charge.failed + payment_intent.payment_failed (see `payment_failures`)
    card_excess: Stat = Stat()
    duplicates: Stat = Stat()
    bad_signatures: Stat = Stat()
    lapses: Stat = Stat()
    failure_rate: float = 0.0  # payment failures / attempts (charges and intents) over the whole history, incidents left out
    lapse_rate: float = 0.0  # lapses per window over the whole history
    failing_customer_share: float | None = None  # pooled failed_customers / charge.failed over the whole history
    lag_p50: float = 0.0  # median of the windows' lag_p50
    # Amount scales: the 90th percentile over the whole history of the windows' largest refund, sum of
    # negative amounts and largest credit (`_p90`).
    refund_p90: float | None = None
    negative_p90: float | None = None
    credit_p90: float | None = None
    charge_p90: float | None = None  # of the windows' largest charge: the scale while the others have too little history
    seasonal_events: float | None = None  # mean events per window in the same hour one day earlier

    @property
    def expected_events(self) -> float:
        """Expected events per window: the lower of yesterday's same hour and the recent rate (fewer false drops)."""
        if self.seasonal_events is None:
            return self.events.mean
        return min(self.seasonal_events, self.events.mean)

    @classmethod
    def from_history(cls, history: Sequence[Window], at: datetime, cards_per_customer: float = CARDS_PER_CUSTOMER) -> Baseline:
        """``cards_per_customer``: the tenant's card-testing ratio (``Thresholds``), for the windows
        left out of its typical failure rate as card testing."""
        if not history:
            return cls()
        # Always GAP_WINDOWS short of now, however young the history: in a tenant's first hour an
        # incident had become its own baseline (a 100 % outage "typical" after 15 minutes).
        end = max(0, len(history) - GAP_WINDOWS)
        recent = history[max(0, end - SPAN_WINDOWS) : end]
        failed = sum(w.charge_failed for w in history[:end])
        customers = sum(w.failed_customers for w in history[:end])
        lags = sorted(w.lag_p50 for w in recent if w.lag_p50 is not None)
        return cls(
            windows=len(recent),
            events=_stat(recent, lambda w: w.events),
            payment_failures=_stat(recent, payment_failures),
            card_excess=_stat(recent, card_excess),
            duplicates=_stat(recent, lambda w: w.duplicates),
            bad_signatures=_stat(recent, lambda w: w.bad_signatures),
            lapses=_stat(recent, lambda w: w.lapses),
            failure_rate=_typical_failure_rate(history[:end], cards_per_customer),
            lapse_rate=sum(w.lapses for w in history[:end]) / end if end else 0.0,
            failing_customer_share=customers / failed if failed >= _MIN_FAILURES else None,
            lag_p50=lags[len(lags) // 2] if lags else 0.0,
            refund_p90=_p90([w.max_refund for w in history if w.max_refund]),
            negative_p90=_p90([w.negative_amount for w in history if w.negative_amount]),
            credit_p90=_p90([w.max_credit for w in history if w.max_credit]),
            charge_p90=_p90([w.max_charge for w in history if w.max_charge]),
            seasonal_events=_seasonal(history, at),
        )


def refresh_block(start: datetime, seconds: int) -> datetime:
    """The start of the block of ``REFRESH_WINDOWS`` windows that ``start`` falls in. A baseline is
    computed once per block from the history before the block, so whichever process scores a
    window (and however many it scored before) judges it against the same baseline."""
    period = REFRESH_WINDOWS * seconds
    return datetime.fromtimestamp(start.timestamp() // period * period, start.tzinfo)


def windows_before(history: Sequence[Window], block: datetime) -> Sequence[Window]:
    """The windows of ``history`` (in order) that start before ``block``."""
    if not history or history[-1].start < block:
        return history
    return history[: bisect.bisect_left(history, block, key=lambda window: window.start)]


def payment_failures(window: Window) -> int:
    """Failed payment attempts: ``charge.failed`` and ``payment_intent.payment_failed``, less ``card_excess``.

    Both are evidence of a processor outage. Where every failed intent comes with its failed charge
    (one attempt, two events) they are one piece of evidence, not two; the failure rule divides by
    this count's over-dispersion, which is then about 2, so the pair is not counted twice. A
    customer's failed cards beyond the first in a window (a declined customer trying another card,
    or an attacker's cards) are that customer's attempts again, not more customers failing: they
    count once, here and in ``payment_attempts``.
    """
    return window.charge_failed + window.payment_failed - card_excess(window)


def payment_attempts(window: Window) -> int:
    """Charges and payment intents that failed or succeeded, less ``card_excess`` (see ``payment_failures``)."""
    return window.charge_failed + window.charge_succeeded + window.payment_failed + window.payment_succeeded - card_excess(window)


def card_excess(window: Window) -> int:
    """Failed cards beyond one per failing customer: the card-testing signature."""
    excess = window.failed_cards - window.failed_customers
    return excess if excess > 0 else 0


def card_testing_like(window: Window, cards_per_customer: float = CARDS_PER_CUSTOMER) -> bool:
    """Several cards beyond one per failing customer in one window (a customer retrying with a second card is not).

    Asked of every window of a week's history: the cheap test comes first (most windows have no failed card)."""
    return window.failed_cards >= 2 and card_excess(window) >= 2 and window.failed_cards >= cards_per_customer * window.failed_customers


def _typical_failure_rate(history: Sequence[Window], cards_per_customer: float) -> float:
    """Payment failures / attempts of ordinary traffic, pooled over hour blocks: card-testing-like
    windows (the failure rule skips them too) are left out, and so is a block whose failures are
    significant (``_INCIDENT_NATS``) against the rest of the history, an outage.

    The rate is what an outage is judged against: a half-hour of card testing at a slow tenant (tens
    of failed charges) had doubled it for the rest of the week, and an earlier outage raised it by a
    third at the next one. Blocks are kept while the rest of the history has no failure to judge by.
    """
    blocks = [_ordinary_payments(history[i : i + _RATE_BLOCK], cards_per_customer) for i in range(0, len(history), _RATE_BLOCK)]
    failures, attempts = sum(f for f, _ in blocks), sum(a for _, a in blocks)
    if not failures:
        return 0.0
    kept_failures = kept_attempts = 0
    for f, a in blocks:
        rest, rest_attempts = failures - f, attempts - a
        if rest and binomial_excess(f, a, rest / rest_attempts) >= _INCIDENT_NATS:
            continue
        kept_failures += f
        kept_attempts += a
    return kept_failures / kept_attempts if kept_attempts else failures / attempts


def _ordinary_payments(windows: Sequence[Window], cards_per_customer: float) -> tuple[int, int]:
    """Payment failures and attempts of the windows that are not card-testing-like."""
    failures = attempts = 0
    for window in windows:
        if not (window.charge_failed or window.charge_succeeded or window.payment_failed or window.payment_succeeded):
            continue  # adds nothing: most of a slow tenant's windows, and the calls below are this pass's cost
        if not card_testing_like(window, cards_per_customer):
            failures += payment_failures(window)
            attempts += payment_attempts(window)
    return failures, attempts


def _stat(windows: Sequence[Window], metric: Callable[[Window], float]) -> Stat:
    return Stat.of([metric(w) for w in windows])


def _p90(values: list[int]) -> float | None:
    """The scale ordinary amounts are judged by. Not the p99: an incident's amount lands in a few
    windows (the refund, the ``refund.created`` that follows it), and among the few dozen windows
    with amounts a slow tenant has after some days those are the top few per cent, so a p99 became
    the incident itself and hid the next one for the rest of the week. Ordinary amounts' p99 is
    ~1.5-2.1x their p90."""
    if len(values) < _MIN_AMOUNTS:
        return None
    values.sort()
    return float(values[int(0.9 * (len(values) - 1))])


def _seasonal(history: Sequence[Window], at: datetime) -> float | None:
    """Mean events per window in the hour centred on ``at`` one day earlier; None if history is shorter."""
    centre = at - timedelta(days=1)
    if history[0].start > centre - timedelta(minutes=30):
        return None
    lo = bisect.bisect_left(history, centre - timedelta(minutes=30), key=lambda w: w.start)
    hi = bisect.bisect_left(history, centre + timedelta(minutes=30), key=lambda w: w.start)
    span = history[lo:hi]
    return sum(w.events for w in span) / len(span) if span else None
