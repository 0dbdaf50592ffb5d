"""Standard Webhooks signatures for outbound deliveries, so receivers can use any official verifier."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from secrets import token_bytes

SECRET_PREFIX = "whsec_"
USER_AGENT = "Hookgate-Webhooks/1.0 (+https://hookgate.dev)"


def new_endpoint_secret() -> str:
    """A fresh endpoint secret in the ``whsec_<base64>`` form every Standard Webhooks library accepts."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(24)).decode("ascii")


def _key(secret: str) -> bytes:
    """The HMAC key behind a secret; padding is optional, as in the reference libraries."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("endpoint secret is not valid base64") from None
    if not key:
        raise ValueError("endpoint secret is empty")
    return key


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<sig>`` per secret, space-separated, so a rotation's old and new secrets both verify."""
    if not secrets:
        raise ValueError("at least one endpoint secret is required")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(_key(secret), signed, hashlib.sha256)).decode("ascii")
        for secret in secrets
    )


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The full header set of a delivery; ``msg_id`` stays the same across retries so receivers can dedupe."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
