"""Webhook providers: signature checks, event identity, secrets — pure and synchronous.

Each provider is one row of ``_TABLE``; the public functions only dispatch. Everything here runs
per request, so it does no I/O and touches a secret only to compute an HMAC. Error messages are
read by the sender: they name headers, never a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import stripe
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SignatureReason = Literal[
    "missing_signature",
    "malformed_signature",
    "no_matching_signature",
    "timestamp_too_old",
    "timestamp_in_future",
    "invalid_body",
]

_MAX_SECRET = 256
_DIGEST_SIZE = hashlib.sha256().digest_size
_ED25519_SIZE = 64  # bytes of an Ed25519 signature
_PUBLIC_KEY = "whpk_"  # Standard Webhooks' prefix of an Ed25519 public key
_MAX_COLUMN = 255  # events.external_id and events.type are String(255): longer would fail the insert
_COMMON_HEADERS = ("content-type", "user-agent")


class SignatureError(Exception):
    """Message is a sentence the sender can read (returned in a 400/401 body)."""

    def __init__(self, reason: SignatureReason, message: str) -> None:
        super().__init__(message)
        self.reason: SignatureReason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    external_id: str  # the dedupe key
    type: str  # event type, e.g. "charge.succeeded"
    created_at: datetime | None  # provider's creation time (UTC-aware) if known


# --- shared helpers -----------------------------------------------------------------------------


def _hashed(data: bytes) -> str:
    """The dedupe key of last resort: a retry of the same bytes gets the same key."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dedupe_id(candidate: object, body: bytes) -> str:
    """A usable id as text; a missing one falls back to the body hash, an over-long one is hashed."""
    if isinstance(candidate, bool) or not isinstance(candidate, str | int) or candidate == "":
        return _hashed(body)
    value = str(candidate)
    return value if len(value) <= _MAX_COLUMN else _hashed(value.encode())


def _event_type(value: object) -> str:
    return value[:_MAX_COLUMN] if isinstance(value, str) and value else "unknown"


def _from_unix(value: object) -> datetime | None:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        return None


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise SignatureError("missing_signature", f"The {name} header is missing.")
    return value


def _malformed(message: str) -> SignatureError:
    return SignatureError("malformed_signature", message)


def _no_match(header: str) -> SignatureError:
    message = f"No signature in the {header} header matches a signing secret of this source."
    return SignatureError("no_matching_signature", message)


def _check_timestamp(timestamp: int, now: float, tolerance: int) -> None:
    if timestamp < now - tolerance:
        raise SignatureError(
            "timestamp_too_old",
            f"The signature timestamp is more than {tolerance} seconds old; sign the event again to resend it.",
        )
    if timestamp > now + tolerance:
        raise SignatureError(
            "timestamp_in_future",
            f"The signature timestamp is more than {tolerance} seconds in the future; check the sending clock.",
        )


def _b64_digest(value: str, size: int = _DIGEST_SIZE) -> bytes | None:
    """A base64 SHA-256 digest (or another ``size`` of bytes) as bytes, or None when it is not one."""
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return None
    return digest if len(digest) == size else None


def _hex_digest(value: str) -> bytes | None:
    """A hex SHA-256 digest as bytes, or None when it is not one."""
    try:
        digest = bytes.fromhex(value)
    except ValueError:
        return None
    return digest if len(digest) == _DIGEST_SIZE else None


# --- verification -------------------------------------------------------------------------------

_Verifier = Callable[[bytes, Mapping[str, str], Sequence[str], int, float], None]


def _stripe_header(header: str) -> tuple[int, list[str]]:
    """Parse ``t=…,v1=…`` exactly as ``stripe.WebhookSignature`` does, so verdicts agree."""
    items = [item.split("=", 2) for item in header.split(",")]
    try:
        timestamp = int([item[1] for item in items if item[0] == "t"][0])
        signatures = [item[1] for item in items if item[0] == "v1"]
    except (IndexError, ValueError):
        raise _malformed("The stripe-signature header must look like t=<unix time>,v1=<hex signature>.") from None
    if not signatures:
        raise _malformed("The stripe-signature header has no v1 signature.")
    if not all(signature.isascii() for signature in signatures):
        # The library's compare raises TypeError on these instead of answering.
        raise _malformed("The stripe-signature header has a non-ASCII v1 signature.")
    return timestamp, signatures


def _verify_stripe(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], tolerance: int, now: float
) -> None:
    """Stripe's own library matches the signature; the timestamp window is ours, both ways and testable."""
    header = _required(headers, "stripe-signature")
    timestamp, _ = _stripe_header(header)
    _check_timestamp(timestamp, now, tolerance)
    try:
        text = body.decode("utf-8")  # once, not per secret; the library signs the decoded text
    except UnicodeDecodeError:
        raise SignatureError("invalid_body", "The body is not valid UTF-8, so no Stripe signature can match.") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance=None)
        except stripe.SignatureVerificationError:
            continue
        return
    raise _no_match("stripe-signature")


def _public_key(secret: str) -> Ed25519PublicKey:
    """The key of a ``whpk_<base64>`` Ed25519 public key: Standard Webhooks' asymmetric scheme
    (``v1a`` signatures), where the receiver holds only the sender's public key."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(secret.removeprefix(_PUBLIC_KEY), validate=True))


def _signed_by(secret: str, signed: bytes, signatures: list[bytes]) -> bool:
    """Whether one of the ``v1a`` signatures is the public key's over ``signed``."""
    try:
        key = _public_key(secret)
    except ValueError:
        return False  # validate_secret keeps these out; a stray one simply never matches
    for signature in signatures:
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            continue
        return True
    return False


def _standard_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; padding is optional, as in the official library."""
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


_MAX_STAMP_DIGITS = 12  # past year 33,000; Python refuses to parse over 4,300 digits at all


def _verify_standard(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], tolerance: int, now: float
) -> None:
    msg_id = _required(headers, "webhook-id")
    stamp = _required(headers, "webhook-timestamp")
    header = _required(headers, "webhook-signature")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > _MAX_STAMP_DIGITS:
        raise _malformed("The webhook-timestamp header must be whole unix seconds.")
    _check_timestamp(int(stamp), now, tolerance)
    entries = [entry.partition(",") for entry in header.split()]
    sent = [digest for version, _, value in entries if version == "v1" and (digest := _b64_digest(value)) is not None]
    asymmetric = [signature for version, _, value in entries
                  if version == "v1a" and (signature := _b64_digest(value, _ED25519_SIZE)) is not None]
    if not (sent or asymmetric):
        raise _malformed("The webhook-signature header has no valid v1,<base64> or v1a,<base64> entry.")
    signed = f"{msg_id}.{stamp}.".encode() + body
    for secret in secrets:
        if secret.startswith(_PUBLIC_KEY):
            if _signed_by(secret, signed, asymmetric):
                return
            continue
        try:
            key = _standard_key(secret)
        except ValueError:
            continue  # validate_secret keeps these out; a stray one simply never matches
        expected = hmac.digest(key, signed, "sha256")
        if any(hmac.compare_digest(expected, candidate) for candidate in sent):
            return
    raise _no_match("webhook-signature")


def _body_hmac(header: str, decode: Callable[[str], bytes | None], shape: str) -> _Verifier:
    """A verifier for senders that sign just the body with the secret's UTF-8 bytes."""

    def verify(
        body: bytes, headers: Mapping[str, str], secrets: Sequence[str], tolerance: int, now: float
    ) -> None:
        sent = decode(_required(headers, header))
        if sent is None:
            raise _malformed(f"The {header} header must be {shape}.")
        for secret in secrets:
            if hmac.compare_digest(hmac.digest(secret.encode(), body, "sha256"), sent):
                return
        raise _no_match(header)

    return verify


def _github_digest(value: str) -> bytes | None:
    scheme, _, digest = value.partition("=")
    return _hex_digest(digest) if scheme == "sha256" else None


def _generic_digest(value: str) -> bytes | None:
    value = value.removeprefix("sha256=")
    return _hex_digest(value) or _b64_digest(value)


# --- identity -----------------------------------------------------------------------------------

_Identifier = Callable[[bytes, dict[str, Any], Mapping[str, str]], Identity]


def _identify_stripe(body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> Identity:
    return Identity(
        _dedupe_id(payload.get("id"), body),
        _event_type(payload.get("type")),
        _from_unix(payload.get("created")),
    )


def _identify_standard(body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> Identity:
    return Identity(
        _dedupe_id(headers.get("webhook-id"), body),
        _event_type(payload.get("type")),
        _from_unix(headers.get("webhook-timestamp")),
    )


def _identify_github(body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> Identity:
    event = headers.get("x-github-event") or "unknown"
    action = payload.get("action")
    return Identity(
        _dedupe_id(headers.get("x-github-delivery"), body),
        _event_type(f"{event}.{action}" if isinstance(action, str) and action else event),
        None,
    )


def _identify_shopify(body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> Identity:
    return Identity(
        _dedupe_id(headers.get("x-shopify-webhook-id") or headers.get("x-shopify-event-id"), body),
        _event_type(headers.get("x-shopify-topic")),
        _from_iso(headers.get("x-shopify-triggered-at")),
    )


def _identify_generic(body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> Identity:
    kind = payload.get("type")
    return Identity(
        _dedupe_id(payload.get("id"), body),
        _event_type(kind if isinstance(kind, str) and kind else payload.get("event")),
        None,
    )


# --- secrets ------------------------------------------------------------------------------------


def _validate_stripe(secret: str) -> None:
    if not secret.startswith("whsec_") or secret == "whsec_":
        raise ValueError("A Stripe signing secret starts with whsec_ (copy it from the Stripe dashboard).")


def _validate_standard(secret: str) -> None:
    if secret.startswith(_PUBLIC_KEY):
        try:
            _public_key(secret)
        except ValueError:
            raise ValueError("A Standard Webhooks public key is whpk_ followed by the base64 of 32 bytes (Ed25519).") from None
        return
    try:
        key = _standard_key(secret)
    except ValueError:
        raise ValueError("A Standard Webhooks secret is whsec_ followed by base64 (or a whpk_ Ed25519 public key).") from None
    if not key:
        raise ValueError("A Standard Webhooks secret needs key bytes after whsec_.")


def _any_secret(secret: str) -> None:
    """GitHub, Shopify and generic senders take any text as the key."""


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Provider:
    verify: _Verifier
    identify: _Identifier
    generate: Callable[[], str]
    validate: Callable[[str], None]
    headers: tuple[str, ...]  # kept with the event, besides _COMMON_HEADERS; never a signature
    redelivers: bool = True  # sends a refused request again by itself (GitHub does not: only by hand)


def _token() -> str:
    return _random.token_urlsafe(32)


_TABLE: dict[str, _Provider] = {
    "stripe": _Provider(
        _verify_stripe,
        _identify_stripe,
        lambda: "whsec_" + _random.token_urlsafe(24),
        _validate_stripe,
        (),
    ),
    "standard_webhooks": _Provider(
        _verify_standard,
        _identify_standard,
        lambda: "whsec_" + base64.b64encode(_random.token_bytes(24)).decode(),
        _validate_standard,
        ("webhook-id", "webhook-timestamp"),
    ),
    "github": _Provider(
        _body_hmac("x-hub-signature-256", _github_digest, "sha256=<hex HMAC-SHA256 of the body>"),
        _identify_github,
        _token,
        _any_secret,
        (
            "x-github-event",
            "x-github-delivery",
            "x-github-hook-id",
            "x-github-hook-installation-target-id",
            "x-github-hook-installation-target-type",
        ),
        redelivers=False,
    ),
    "shopify": _Provider(
        _body_hmac("x-shopify-hmac-sha256", _b64_digest, "the base64 HMAC-SHA256 of the body"),
        _identify_shopify,
        _token,
        _any_secret,
        (
            "x-shopify-topic",
            "x-shopify-shop-domain",
            "x-shopify-webhook-id",
            "x-shopify-event-id",
            "x-shopify-triggered-at",
            "x-shopify-api-version",
        ),
    ),
    "hmac_sha256": _Provider(
        _body_hmac("x-webhook-signature", _generic_digest, "the hex or base64 HMAC-SHA256 of the body"),
        _identify_generic,
        _token,
        _any_secret,
        (),
    ),
}

PROVIDERS: tuple[str, ...] = tuple(_TABLE)


def _provider(name: str) -> _Provider:
    try:
        return _TABLE[name]
    except KeyError:
        raise ValueError(f"Unknown provider {name!r}; expected one of {', '.join(PROVIDERS)}.") from None


# --- public API ---------------------------------------------------------------------------------


def verify(
    provider: str,
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> None:
    """headers has lower-case keys. Passes if ANY secret verifies (rotation); else raises SignatureError."""
    _provider(provider).verify(body, headers, secrets, tolerance, time.time() if now is None else now)


def identify(provider: str, body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> Identity:
    """payload is the already-parsed JSON object of body."""
    return _provider(provider).identify(body, payload, headers)


def generate_secret(provider: str) -> str:
    """A fresh secret in the shape the provider's senders expect."""
    return _provider(provider).generate()


def validate_secret(provider: str, secret: str) -> None:
    """Raise ValueError with a readable message (never echoing the secret) if it cannot work."""
    checks = _provider(provider).validate
    if not secret:
        raise ValueError("The signing secret is empty.")
    if len(secret) > _MAX_SECRET:
        raise ValueError(f"The signing secret is longer than {_MAX_SECRET} characters.")
    if secret != secret.strip():
        raise ValueError("The signing secret starts or ends with whitespace; it would never match.")
    checks(secret)


def redelivers(provider: str) -> bool:
    """Whether the provider sends a request again by itself after a 429 or 503."""
    return _provider(provider).redelivers


def kept_headers(provider: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The provider's id/topic/event headers worth storing with the event; signature headers are not kept."""
    names = _COMMON_HEADERS + _provider(provider).headers
    return {name: headers[name] for name in names if name in headers}
