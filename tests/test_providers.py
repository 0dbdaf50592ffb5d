"""Provider layer against the real other side: Stripe's and Standard Webhooks' own libraries sign.

GitHub, Shopify and generic senders sign with a plain HMAC-SHA256 of the body, so computing that
with ``hmac`` here is exactly what those senders do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from standardwebhooks.webhooks import Webhook

from gateway.ingest.providers import (
    PROVIDERS,
    Identity,
    SignatureError,
    generate_secret,
    identify,
    kept_headers,
    validate_secret,
    verify,
)
from tests.support.stripe_events import FIXTURES

NOW = 1_700_000_000
STRIPE_SECRET = "whsec_test_current_0123456789abcdef"
STRIPE_OLD_SECRET = "whsec_test_previous_fedcba9876543210"


def _body_hash(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _reason(provider: str, body: bytes, headers: dict[str, str], secrets: list[str], **kw: Any) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(provider, body, headers, secrets, **kw)
    return caught.value.reason


# --- Stripe -------------------------------------------------------------------------------------


def _stripe_event(name: str = "charge_succeeded.json") -> tuple[bytes, dict[str, Any]]:
    """A real Stripe event with a fresh id (the fixtures reuse ids across files)."""
    event = json.loads((FIXTURES / name).read_text())
    event["id"] = f"evt_test_{uuid.uuid4().hex}"
    return json.dumps(event).encode(), event


def _stripe_headers(body: bytes, secret: str = STRIPE_SECRET, timestamp: int = NOW) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=timestamp)
    return {"stripe-signature": header}


def _stripe_sig(body: bytes, timestamp: int, secret: str = STRIPE_SECRET) -> str:
    return stripe.WebhookSignature._compute_signature(f"{timestamp}.{body.decode()}", secret)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_stripe_fixture_verifies_and_identifies(name: str) -> None:
    body, event = _stripe_event(name)
    verify("stripe", body, _stripe_headers(body), [STRIPE_SECRET], now=NOW)
    assert identify("stripe", body, event, {}) == Identity(
        event["id"], event["type"], datetime.fromtimestamp(event["created"], UTC)
    )


def test_stripe_rejections() -> None:
    body, _ = _stripe_event()
    good = _stripe_headers(body)
    assert _reason("stripe", body, good, ["whsec_someone_else"], now=NOW) == "no_matching_signature"
    tampered = body.replace(b'"amount": 3000', b'"amount": 3001')
    assert tampered != body
    assert _reason("stripe", tampered, good, [STRIPE_SECRET], now=NOW) == "no_matching_signature"
    assert _reason("stripe", body, {}, [STRIPE_SECRET], now=NOW) == "missing_signature"
    assert _reason("stripe", body, {"stripe-signature": ""}, [STRIPE_SECRET], now=NOW) == "missing_signature"
    assert _reason("stripe", body, good, [], now=NOW) == "no_matching_signature"


@pytest.mark.parametrize(
    "header",
    ["garbage", f"t=abc,v1={'0' * 64}", f"v1={'0' * 64}", f"t={NOW}", f"t={NOW},v0={'0' * 64}", f"t={NOW},v1=é"],
)
def test_stripe_malformed_header(header: str) -> None:
    body, _ = _stripe_event()
    headers = {"stripe-signature": header}
    assert _reason("stripe", body, headers, [STRIPE_SECRET], now=NOW) == "malformed_signature"


def test_stripe_timestamp_window() -> None:
    body, _ = _stripe_event()
    verify("stripe", body, _stripe_headers(body, timestamp=NOW - 300), [STRIPE_SECRET], now=NOW)
    verify("stripe", body, _stripe_headers(body, timestamp=NOW + 300), [STRIPE_SECRET], now=NOW)
    stale = _stripe_headers(body, timestamp=NOW - 301)
    future = _stripe_headers(body, timestamp=NOW + 301)
    assert _reason("stripe", body, stale, [STRIPE_SECRET], now=NOW) == "timestamp_too_old"
    assert _reason("stripe", body, future, [STRIPE_SECRET], now=NOW) == "timestamp_in_future"
    verify("stripe", body, stale, [STRIPE_SECRET], now=NOW, tolerance=301)


def test_stripe_stale_on_the_real_clock() -> None:
    body, _ = _stripe_event()
    stale = _stripe_headers(body, timestamp=int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, stale["stripe-signature"], STRIPE_SECRET, 300)
    assert _reason("stripe", body, stale, [STRIPE_SECRET]) == "timestamp_too_old"


def test_stripe_invalid_utf8_body() -> None:
    body = b'{"id": "evt_1", "type": "charge.succeeded", "note": "\xff\xfe"}'
    headers = {"stripe-signature": f"t={NOW},v1={'0' * 64}"}
    assert _reason("stripe", body, headers, [STRIPE_SECRET], now=NOW) == "invalid_body"


def test_stripe_rotation_either_secret() -> None:
    body, _ = _stripe_event()
    for signer in (STRIPE_SECRET, STRIPE_OLD_SECRET):
        verify("stripe", body, _stripe_headers(body, signer), [STRIPE_SECRET, STRIPE_OLD_SECRET], now=NOW)
    # Stripe itself sends one v1 per secret while a rotation overlaps.
    both = f"t={NOW},v1={_stripe_sig(body, NOW, 'whsec_x')},v1={_stripe_sig(body, NOW, STRIPE_OLD_SECRET)}"
    verify("stripe", body, {"stripe-signature": both}, [STRIPE_OLD_SECRET], now=NOW)


def _tricky_headers(body: bytes, ts: int) -> dict[str, str]:
    sig = _stripe_sig(body, ts)
    bad = "0" * 64
    return {
        "valid": f"t={ts},v1={sig}",
        "second v1 matches": f"t={ts},v1={bad},v1={sig}",
        "v0 only": f"t={ts},v0={sig}",
        "v0 and v1": f"t={ts},v0={bad},v1={sig}",
        "space after comma": f"t={ts}, v1={sig}",
        "space inside t value": f"t= {ts},v1={sig}",
        "space after signature": f"t={ts},v1={sig} ",
        "empty": "",
        "only commas": ",,,",
        "duplicated t, first right": f"t={ts},t=1,v1={sig}",
        "duplicated t, second right": f"t=1,t={ts},v1={sig}",
        "t without value": f"t,v1={sig}",
        "v1 without value": f"t={ts},v1,v1={sig}",
        "upper-case hex": f"t={ts},v1={sig.upper()}",
        "unknown field": f"t={ts},v1={sig},x=1",
        "signature first": f"v1={sig},t={ts}",
        "trailing comma": f"t={ts},v1={sig},",
        "extra = after signature": f"t={ts},v1={sig}=junk",
        "leading zero timestamp": f"t=0{ts},v1={sig}",
        "fractional timestamp": f"t={ts}.0,v1={sig}",
        "semicolons": f"t={ts};v1={sig}",
        "truncated signature": f"t={ts},v1={sig[:-1]}",
        "stale": f"t={ts - 1000},v1={_stripe_sig(body, ts - 1000)}",
        "non-ASCII signature alone": f"t={ts},v1=é",
    }


def _library_accepts(body: bytes, header: str) -> bool:
    try:
        stripe.WebhookSignature.verify_header(body, header, STRIPE_SECRET, 300)
    except stripe.SignatureVerificationError:
        return False
    except TypeError:  # hmac.compare_digest refuses non-ASCII text: the library does not accept
        return False
    return True


def _we_accept(body: bytes, header: str) -> bool:
    try:
        verify("stripe", body, {"stripe-signature": header}, [STRIPE_SECRET])
    except SignatureError:
        return False
    return True


@pytest.mark.parametrize("case", list(_tricky_headers(b"{}", NOW)))
def test_stripe_agrees_with_library(case: str) -> None:
    body, _ = _stripe_event()
    header = _tricky_headers(body, int(time.time()))[case]
    assert _we_accept(body, header) == _library_accepts(body, header)


def test_stripe_agreement_table_has_both_verdicts() -> None:
    body, _ = _stripe_event()
    verdicts = {_library_accepts(body, h) for h in _tricky_headers(body, int(time.time())).values()}
    assert verdicts == {True, False}


def test_stripe_stricter_than_library() -> None:
    """Where the library says yes and we say no, on purpose; never the other way round."""
    body, _ = _stripe_event()
    ts = int(time.time())
    future = f"t={ts + 1000},v1={_stripe_sig(body, ts + 1000)}"
    non_ascii_extra = f"t={ts},v1={_stripe_sig(body, ts)},v1=é"
    for header, reason in ((future, "timestamp_in_future"), (non_ascii_extra, "malformed_signature")):
        assert _library_accepts(body, header)
        assert _reason("stripe", body, {"stripe-signature": header}, [STRIPE_SECRET]) == reason


def test_stripe_identity_fallbacks() -> None:
    body = b'{"object": "event", "created": "yesterday"}'
    assert identify("stripe", body, json.loads(body), {}) == Identity(_body_hash(body), "unknown", None)
    long_id = "evt_" + "x" * 300
    identity = identify("stripe", body, {"id": long_id, "type": "charge.succeeded", "created": NOW}, {})
    assert identity.external_id == _body_hash(long_id.encode())
    assert identity.created_at == datetime.fromtimestamp(NOW, UTC)


# --- Standard Webhooks ----------------------------------------------------------------------------

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _sw_headers(body: bytes, secret: str = SW_SECRET, ts: int = NOW, msg_id: str = "msg_1") -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_standard_webhooks_spec_vector() -> None:
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'
    verify("standard_webhooks", body, headers, [SW_SECRET], now=1614265330)
    assert identify("standard_webhooks", body, json.loads(body), headers) == Identity(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", "unknown", datetime.fromtimestamp(1614265330, UTC)
    )


def test_standard_webhooks_official_signer() -> None:
    body, event = _stripe_event("invoice_paid.json")
    headers = _sw_headers(body, msg_id="msg_abc")
    verify("standard_webhooks", body, headers, [SW_SECRET], now=NOW)
    verify("standard_webhooks", body, headers, [SW_SECRET.removeprefix("whsec_")], now=NOW)
    assert identify("standard_webhooks", body, event, headers) == Identity(
        "msg_abc", "invoice.paid", datetime.fromtimestamp(NOW, UTC)
    )


def test_standard_webhooks_generated_secret_and_rotation() -> None:
    old, new = generate_secret("standard_webhooks"), generate_secret("standard_webhooks")
    body = b'{"type": "user.created"}'
    for signer in (old, new):
        verify("standard_webhooks", body, _sw_headers(body, signer), [new, old], now=NOW)
    assert _reason("standard_webhooks", body, _sw_headers(body, old), [new], now=NOW) == "no_matching_signature"


def test_standard_webhooks_rejections() -> None:
    body = b'{"type": "user.created"}'
    good = _sw_headers(body)
    assert _reason("standard_webhooks", body + b" ", good, [SW_SECRET], now=NOW) == "no_matching_signature"
    other = generate_secret("standard_webhooks")
    assert _reason("standard_webhooks", body, good, [other], now=NOW) == "no_matching_signature"
    forged_id = {**good, "webhook-id": "msg_2"}
    assert _reason("standard_webhooks", body, forged_id, [SW_SECRET], now=NOW) == "no_matching_signature"
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        missing = {k: v for k, v in good.items() if k != name}
        assert _reason("standard_webhooks", body, missing, [SW_SECRET], now=NOW) == "missing_signature"


def _ed25519_pair() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    return private, "whpk_" + base64.b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _v1a(private: Ed25519PrivateKey, body: bytes, msg_id: str = "msg_asym", ts: int = NOW) -> str:
    return "v1a," + base64.b64encode(private.sign(f"{msg_id}.{ts}.".encode() + body)).decode()


def test_standard_webhooks_asymmetric_signatures() -> None:
    """The spec's v1a scheme: the sender signs with its Ed25519 key, the source holds the whpk_ public key."""
    body = b'{"type": "user.created"}'
    private, public = _ed25519_pair()
    other, other_public = _ed25519_pair()
    headers = {"webhook-id": "msg_asym", "webhook-timestamp": str(NOW), "webhook-signature": _v1a(private, body)}
    verify("standard_webhooks", body, headers, [public], now=NOW)
    verify("standard_webhooks", body, headers, [SW_SECRET, other_public, public], now=NOW)  # beside HMAC secrets, rotated keys
    both = {**headers, "webhook-signature": f"{_v1a(other, body)} {_sw_headers(body, msg_id='msg_asym')['webhook-signature']}"}
    verify("standard_webhooks", body, both, [SW_SECRET], now=NOW)  # a v1 entry still counts beside a v1a one
    verify("standard_webhooks", body, both, [other_public], now=NOW)
    assert _reason("standard_webhooks", body + b" ", headers, [public], now=NOW) == "no_matching_signature"
    assert _reason("standard_webhooks", body, headers, [other_public], now=NOW) == "no_matching_signature"
    assert _reason("standard_webhooks", body, {**headers, "webhook-id": "msg_2"}, [public], now=NOW) == "no_matching_signature"
    assert _reason("standard_webhooks", body, headers, [SW_SECRET], now=NOW) == "no_matching_signature"  # a secret is no key
    hmac_only = _sw_headers(body, msg_id="msg_asym")
    assert _reason("standard_webhooks", body, hmac_only, [public], now=NOW) == "no_matching_signature"  # nor the other way
    garbled = {**headers, "webhook-signature": "v1a,not-base64!"}
    assert _reason("standard_webhooks", body, garbled, [public], now=NOW) == "malformed_signature"

    validate_secret("standard_webhooks", public)
    for bad in ("whpk_", "whpk_AAAA", "whpk_" + base64.b64encode(b"x" * 31).decode(), "whpk_!!"):
        with pytest.raises(ValueError, match="whpk_"):
            validate_secret("standard_webhooks", bad)


def test_standard_webhooks_timestamp_window() -> None:
    body = b"{}"
    verify("standard_webhooks", body, _sw_headers(body, ts=NOW - 300), [SW_SECRET], now=NOW)
    verify("standard_webhooks", body, _sw_headers(body, ts=NOW + 300), [SW_SECRET], now=NOW)
    stale, future = _sw_headers(body, ts=NOW - 301), _sw_headers(body, ts=NOW + 301)
    assert _reason("standard_webhooks", body, stale, [SW_SECRET], now=NOW) == "timestamp_too_old"
    assert _reason("standard_webhooks", body, future, [SW_SECRET], now=NOW) == "timestamp_in_future"


def test_standard_webhooks_signature_entries() -> None:
    body = b"{}"
    good = _sw_headers(body)
    valid = good["webhook-signature"]
    for header in (f"v1,{'A' * 44} {valid}", f"v2,abc {valid}", f"v1a,xyz  {valid}"):
        verify("standard_webhooks", body, {**good, "webhook-signature": header}, [SW_SECRET], now=NOW)
    for header in ("v2,abc", "v1", "v1,not base64!", valid.replace("v1,", "v1a,")):
        signed = {**good, "webhook-signature": header}
        assert _reason("standard_webhooks", body, signed, [SW_SECRET], now=NOW) == "malformed_signature"
    for stamp in ("abc", f"{NOW}.5", f"-{NOW}", "9" * 5000):  # 5,000 digits: more than int() parses
        stamped = {**good, "webhook-timestamp": stamp}
        assert _reason("standard_webhooks", body, stamped, [SW_SECRET], now=NOW) == "malformed_signature"


def test_standard_webhooks_identity_fallbacks() -> None:
    body = b'{"type": 5}'
    assert identify("standard_webhooks", body, {"type": 5}, {}) == Identity(_body_hash(body), "unknown", None)


# --- GitHub, Shopify, generic HMAC ----------------------------------------------------------------

HMAC_SECRET = "s3cret-with-ünïcode"
BODY = b'{"id": "obj_1", "action": "opened", "type": "thing.happened"}'


def _digest(body: bytes = BODY, secret: str = HMAC_SECRET) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


BODY_HMAC_CASES: dict[str, tuple[str, Callable[[bytes], str]]] = {
    "github": ("x-hub-signature-256", lambda d: "sha256=" + d.hex()),
    "shopify": ("x-shopify-hmac-sha256", lambda d: base64.b64encode(d).decode()),
    "hmac_sha256": ("x-webhook-signature", lambda d: d.hex()),
}


@pytest.mark.parametrize("provider", list(BODY_HMAC_CASES))
def test_body_hmac_providers(provider: str) -> None:
    header, encode = BODY_HMAC_CASES[provider]
    good = {header: encode(_digest())}
    verify(provider, BODY, good, ["rotated-out", HMAC_SECRET])
    assert _reason(provider, BODY, good, ["wrong"]) == "no_matching_signature"
    assert _reason(provider, BODY + b"\n", good, [HMAC_SECRET]) == "no_matching_signature"
    assert _reason(provider, BODY, {}, [HMAC_SECRET]) == "missing_signature"
    assert _reason(provider, BODY, {header: ""}, [HMAC_SECRET]) == "missing_signature"
    assert _reason(provider, BODY, {header: "nonsense"}, [HMAC_SECRET]) == "malformed_signature"
    truncated = {header: encode(_digest()[:20])}
    assert _reason(provider, BODY, truncated, [HMAC_SECRET]) == "malformed_signature"


def test_github_header_shape() -> None:
    for value in (_digest().hex(), "sha1=" + _digest().hex(), "sha256=" + base64.b64encode(_digest()).decode()):
        assert _reason("github", BODY, {"x-hub-signature-256": value}, [HMAC_SECRET]) == "malformed_signature"


def test_shopify_rejects_hex() -> None:
    headers = {"x-shopify-hmac-sha256": _digest().hex()}
    assert _reason("shopify", BODY, headers, [HMAC_SECRET]) == "malformed_signature"


@pytest.mark.parametrize(
    "encode",
    [
        lambda d: d.hex(),
        lambda d: "sha256=" + d.hex(),
        lambda d: base64.b64encode(d).decode(),
        lambda d: "sha256=" + base64.b64encode(d).decode(),
    ],
)
def test_generic_hmac_encodings(encode: Callable[[bytes], str]) -> None:
    verify("hmac_sha256", BODY, {"x-webhook-signature": encode(_digest())}, [HMAC_SECRET])


def test_github_identity() -> None:
    payload = json.loads(BODY)
    headers = {"x-github-event": "pull_request", "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert identify("github", BODY, payload, headers) == Identity(
        "72d3162e-cc78-11e3-81ab-4c9367dc0958", "pull_request.opened", None
    )
    push = b'{"ref": "refs/heads/main", "action": null}'
    assert identify("github", push, json.loads(push), {"x-github-event": "push"}) == Identity(
        _body_hash(push), "push", None
    )
    assert identify("github", push, {}, {}).type == "unknown"


def test_shopify_identity() -> None:
    headers = {
        "x-shopify-topic": "orders/create",
        "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "x-shopify-event-id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "x-shopify-triggered-at": "2023-03-29T18:00:27.877041743Z",
    }
    assert identify("shopify", BODY, {}, headers) == Identity(
        "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", "orders/create", datetime(2023, 3, 29, 18, 0, 27, 877041, UTC)
    )
    no_webhook_id = {k: v for k, v in headers.items() if k != "x-shopify-webhook-id"}
    assert identify("shopify", BODY, {}, no_webhook_id).external_id == "98880550-7158-44d4-b7cd-2c97c8a091b5"
    for when in ("last tuesday", "0001-01-01T00:00:00+14:00"):  # the second is before year 1 in UTC
        assert identify("shopify", BODY, {}, {"x-shopify-triggered-at": when}) == Identity(_body_hash(BODY), "unknown", None)
    offset = identify("shopify", BODY, {}, {"x-shopify-triggered-at": "2023-03-29T20:00:27+02:00"})
    assert offset.created_at == datetime(2023, 3, 29, 18, 0, 27, tzinfo=UTC)
    assert offset.created_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("payload", "expected_id", "expected_type"),
    [
        ({"id": "obj_1", "type": "thing.happened", "event": "ignored"}, "obj_1", "thing.happened"),
        ({"id": 42, "event": "thing.done"}, "42", "thing.done"),
        ({"id": True, "type": 3}, None, "unknown"),
        ({"id": "", "type": ""}, None, "unknown"),
        ({}, None, "unknown"),
    ],
)
def test_generic_identity(payload: dict[str, Any], expected_id: str | None, expected_type: str) -> None:
    assert identify("hmac_sha256", BODY, payload, {}) == Identity(expected_id or _body_hash(BODY), expected_type, None)


# --- secrets, headers, dispatch ------------------------------------------------------------------


def test_generated_secrets_have_the_expected_shape() -> None:
    for provider in PROVIDERS:
        first, second = generate_secret(provider), generate_secret(provider)
        assert first != second
        validate_secret(provider, first)
    stripe_secret = generate_secret("stripe")
    assert stripe_secret.startswith("whsec_") and len(stripe_secret) == len("whsec_") + 32
    assert len(base64.b64decode(generate_secret("standard_webhooks").removeprefix("whsec_"))) == 24
    for provider in ("github", "shopify", "hmac_sha256"):
        token = generate_secret(provider)
        assert len(token) >= 32
        base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_generated_stripe_secret_verifies() -> None:
    secret = generate_secret("stripe")
    body, _ = _stripe_event()
    verify("stripe", body, _stripe_headers(body, secret), [secret], now=NOW)


@pytest.mark.parametrize(
    ("provider", "secret"),
    [
        ("github", ""),
        ("github", "x" * 257),
        ("shopify", " padded "),
        ("stripe", "sk_live_not_a_webhook_secret"),
        ("stripe", "whsec_"),
        ("standard_webhooks", "whsec_not*base64!"),
        ("standard_webhooks", "whsec_"),
    ],
)
def test_validate_secret_rejects(provider: str, secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_secret(provider, secret)
    assert str(caught.value).endswith(".")
    assert len(secret.strip()) <= len("whsec_") or secret.strip() not in str(caught.value)


def test_validate_secret_accepts() -> None:
    validate_secret("github", "x" * 256)
    validate_secret("standard_webhooks", SW_SECRET)
    validate_secret("standard_webhooks", SW_SECRET.removeprefix("whsec_"))
    validate_secret("standard_webhooks", "whsec_" + base64.b64encode(b"k" * 24).decode().rstrip("="))
    validate_secret("stripe", STRIPE_SECRET)


def test_no_secret_in_error_messages() -> None:
    body, _ = _stripe_event()
    cases = [
        ("stripe", _stripe_headers(body, STRIPE_OLD_SECRET), STRIPE_SECRET),
        ("standard_webhooks", _sw_headers(body), generate_secret("standard_webhooks")),
        ("github", {"x-hub-signature-256": "sha256=" + _digest(body).hex()}, "another-" + HMAC_SECRET),
    ]
    for provider, headers, secret in cases:
        with pytest.raises(SignatureError) as caught:
            verify(provider, body, headers, [secret], now=NOW)
        message = caught.value.message
        assert message == str(caught.value) and message.endswith(".")
        for known in (secret, STRIPE_OLD_SECRET, SW_SECRET, HMAC_SECRET):
            assert known not in message
            assert known.removeprefix("whsec_") not in message


def test_kept_headers_exclude_signatures() -> None:
    common = {"content-type": "application/json", "user-agent": "Sender/1.0", "authorization": "Bearer x"}
    github = {**common, "x-github-event": "push", "x-github-delivery": "d1", "x-hub-signature-256": "sha256=00"}
    assert kept_headers("github", github) == {
        "content-type": "application/json",
        "user-agent": "Sender/1.0",
        "x-github-event": "push",
        "x-github-delivery": "d1",
    }
    shopify = {
        "x-shopify-topic": "orders/create",
        "x-shopify-shop-domain": "shop.myshopify.com",
        "x-shopify-webhook-id": "w1",
        "x-shopify-hmac-sha256": "AAAA",
    }
    assert kept_headers("shopify", shopify) == {k: v for k, v in shopify.items() if k != "x-shopify-hmac-sha256"}
    standard = {"webhook-id": "m1", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}
    assert kept_headers("standard_webhooks", standard) == {"webhook-id": "m1", "webhook-timestamp": "1"}
    assert kept_headers("stripe", {**common, "stripe-signature": "t=1,v1=00"}) == {
        "content-type": "application/json",
        "user-agent": "Sender/1.0",
    }
    assert kept_headers("hmac_sha256", {"x-webhook-signature": "00"}) == {}


def test_unknown_provider() -> None:
    calls: list[Callable[[], object]] = [
        lambda: verify("paypal", b"{}", {}, ["s"]),
        lambda: identify("paypal", b"{}", {}, {}),
        lambda: generate_secret("paypal"),
        lambda: validate_secret("paypal", "s"),
        lambda: kept_headers("paypal", {}),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="Unknown provider 'paypal'"):
            call()


def test_providers_listed() -> None:
    assert PROVIDERS == ("stripe", "standard_webhooks", "github", "shopify", "hmac_sha256")
