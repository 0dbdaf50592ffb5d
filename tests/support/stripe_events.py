"""Real Stripe payloads from ``shared/fixtures/stripe-events``, each given a fresh id, and signers."""

from __future__ import annotations

import json
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import stripe

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "stripe-events"


@lru_cache(maxsize=None)
def _load(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def stripe_event(name: str = "charge_succeeded", **changes: Any) -> dict[str, Any]:
    """A fixture event with a fresh ``evt_`` id (fixture ids repeat across files)."""
    event = json.loads(_load(name))
    event["id"] = "evt_" + uuid.uuid4().hex[:24]
    event.update(changes)
    return event


def stripe_signature(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header as Stripe builds it, computed by Stripe's own library."""
    t = int(time.time()) if timestamp is None else timestamp
    v1 = stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", secret)
    return f"t={t},v1={v1}"


def signed_stripe(event: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    return body, {"stripe-signature": stripe_signature(body, secret, timestamp), "content-type": "application/json"}
