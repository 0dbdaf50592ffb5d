"""The retry schedule: when the next attempt goes, or that there is none (dead)."""

from __future__ import annotations

import random
from collections.abc import Sequence

JITTER = 0.2


def next_delay(
    attempts_made: int,
    delays: Sequence[float],
    *,
    retry_after: float | None = None,
    max_retry_after: float = 3600.0,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until attempt ``attempts_made + 1``, or None when the schedule is spent.

    ``delays[0]`` is the first attempt (immediate), so after n attempts the next waits
    ``delays[n]`` ± 20 %. A receiver's ``Retry-After`` (429/503) is the least it waits, bounded by
    ``max_retry_after``: it can lengthen the wait, never shorten it (``Retry-After: 0``, or a date
    just past on a receiver's clock, would otherwise spend every attempt in seconds).
    """
    if attempts_made >= len(delays):
        return None
    scheduled = delays[attempts_made] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after is None:
        return scheduled
    return max(scheduled, min(retry_after, max_retry_after))
