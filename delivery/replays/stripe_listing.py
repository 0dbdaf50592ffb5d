"""Listing a Stripe account's events for a backfill, with the ``stripe`` library's auto-pagination.

Stripe lists newest first and keeps 30 days of events; a backfill walks its window backwards and
resumes with ``starting_after`` the last event it stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import stripe

from delivery.replays.steps import JobFailed

PAGE_SIZE = 100
_TIMEOUT = 30.0
# Errors that no retry fixes: a revoked or under-privileged key, a request Stripe rejects.
_FATAL = (stripe.AuthenticationError, stripe.PermissionError, stripe.InvalidRequestError)


class StripeUnavailable(Exception):
    """A transient failure (network, rate limit, Stripe's 5xx): the batch is tried again later."""


async def list_events(
    api_key: str, api_base: str, *, since: datetime, until: datetime, starting_after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` events created in [since, until], older than ``starting_after``, as plain JSON."""
    http = stripe.HTTPXClient(timeout=_TIMEOUT)
    client = stripe.StripeClient(api_key, base_addresses={"api": api_base}, http_client=http, max_network_retries=2)
    params: dict[str, Any] = {
        "created": {"gte": int(since.timestamp()), "lte": int(until.timestamp())},
        "limit": min(PAGE_SIZE, limit),
    }
    if starting_after:
        params["starting_after"] = starting_after
    events: list[dict[str, Any]] = []
    try:
        page = await client.v1.events.list_async(params)  # type: ignore[arg-type]
        async for event in page.auto_paging_iter():
            events.append(event.to_dict(for_json=True))
            if len(events) >= limit:
                break
    except _FATAL as exc:
        raise JobFailed(f"Stripe refused the request: {exc.user_message or exc.__class__.__name__}") from None
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe unavailable: {exc.__class__.__name__}") from None
    finally:
        await http.close_async()
    return events
