"""How surprising a count is, in nats: Chernoff bounds on Poisson and binomial tails.

One scale for every count rule: ``surprise >= 12`` means "less likely than about 6 in a million
under the tenant's own baseline", whatever the tenant's volume. That is what makes thresholds
volume-aware: ten failed charges is nothing at 10,000 events/hour and an outage at 10/hour.
"""

from __future__ import annotations

import math


def poisson_excess(observed: float, expected: float) -> float:
    """-ln P(X >= observed) bound for X ~ Poisson(expected); 0 when observed is not above expected."""
    if observed <= expected:
        return 0.0
    return observed * math.log(observed / expected) - observed + expected


def poisson_deficit(observed: float, expected: float) -> float:
    """-ln P(X <= observed) bound for X ~ Poisson(expected); 0 when observed is not below expected."""
    if observed >= expected:
        return 0.0
    head = observed * math.log(observed / expected) if observed > 0 else 0.0
    return head - observed + expected


def binomial_excess(successes: float, trials: float, rate: float) -> float:
    """-ln P(X >= successes) bound for X ~ Binomial(trials, rate): trials x KL(observed ratio || rate)."""
    if trials <= 0:
        return 0.0
    observed = successes / trials
    if observed <= rate:
        return 0.0
    divergence = observed * math.log(observed / rate)
    if observed < 1.0:
        divergence += (1 - observed) * math.log((1 - observed) / (1 - rate))
    return trials * divergence


def to_score(surprise: float, threshold: float) -> float:
    """Map a surprise onto 0..1: 0.5 at the threshold, approaching 1 as it grows."""
    return surprise / (surprise + threshold) if surprise > 0 else 0.0
