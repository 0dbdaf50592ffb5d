"""Bad input, generated: every provider verifier and the ingest route under random headers,
bodies and encodings — invalid UTF-8, huge and deeply nested JSON, missing and duplicated headers.

The properties: a verifier passes or raises ``SignatureError``, nothing else; a correctly signed
body (signed by the providers' own libraries) always passes; the route never answers 5xx, every
refusal is a problem document, and a 2xx only ever follows a valid signature — so nothing
unverified is stored.
"""

from __future__ import annotations

import base64
import hmac
import json
import string
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.app import create_app
from gateway.ingest import providers
from gateway.settings import Settings
from tests.conftest import OPERATOR_KEY
from tests.support.stripe_events import stripe_signature

MAX_BODY = 1_048_576
HEADER_NAMES = [
    "stripe-signature", "webhook-id", "webhook-timestamp", "webhook-signature", "x-hub-signature-256",
    "x-shopify-hmac-sha256", "x-webhook-signature", "content-type", "x-github-event", "x-github-delivery",
    "x-shopify-topic", "x-shopify-webhook-id", "x-shopify-triggered-at", "content-encoding",
]
_latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")
_near_valid = st.sampled_from(["t=", "v1=", "v1,", "sha256=", ",", "=", " ", "t=1,v1=", "=="])
header_values = st.one_of(
    st.text(_latin1, max_size=80),
    st.lists(st.one_of(_near_valid, st.text("0123456789abcdef", max_size=64)), max_size=6).map("".join),
    st.integers(-(2**70), 2**70).map(str),
)
headers_strategy = st.lists(st.tuples(st.one_of(st.sampled_from(HEADER_NAMES), st.from_regex(r"x-[a-z]{1,10}", fullmatch=True)), header_values), max_size=8)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=64).map(lambda b: b"\xff\xfe\xc3(" + b),  # invalid UTF-8
    st.builds(lambda value, encoding: json.dumps(value).encode(encoding), _json_values, st.sampled_from(["utf-8", "utf-16", "utf-32"])),
    st.builds(lambda event_id, kind: json.dumps({"id": event_id, "type": kind}).encode(), st.text(max_size=300), st.text(max_size=300)),
    st.integers(1, 20_000).map(lambda depth: b'{"id": "evt_deep", "x": ' + b"[" * depth + b"]" * depth + b"}"),
    st.integers(1, 20_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"", b"null", b"[]", b'"text"', b"{}", b'{"id": null}', b" " * 100]),
)


def _sign(provider: str, body: bytes, secret: str) -> list[tuple[str, str]]:
    """The headers the provider itself would send, computed with its own library where there is one."""
    now = int(time.time())
    if provider == "stripe":
        return [("stripe-signature", stripe_signature(body, secret, now))]
    if provider == "standard_webhooks":
        msg_id = f"msg_{uuid.uuid4().hex}"
        return [("webhook-id", msg_id), ("webhook-timestamp", str(now)),
                ("webhook-signature", Webhook(secret).sign(msg_id, datetime.fromtimestamp(now, UTC), body.decode()))]
    digest = hmac.digest(secret.encode(), body, "sha256")
    header = {"github": "x-hub-signature-256", "shopify": "x-shopify-hmac-sha256", "hmac_sha256": "x-webhook-signature"}[provider]
    value = {"github": "sha256=" + digest.hex(), "shopify": base64.b64encode(digest).decode(), "hmac_sha256": digest.hex()}[provider]
    return [(header, value)]


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


# --- the verifiers ------------------------------------------------------------------------------

# Letters and digits only, 16 or more: no run of the verifiers' own wording is that long without a
# space or a hyphen, so a secret found in a message was put there, not written there. (Any text
# would do otherwise, but Hypothesis also tries the string constants of the code under test, and a
# secret equal to "The stripe-signature header is missing." is "in" that message.)
_secrets = st.lists(st.text(alphabet=string.ascii_letters + string.digits, min_size=16, max_size=40), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(provider=st.sampled_from(providers.PROVIDERS), body=bodies, headers=headers_strategy, secrets=_secrets)
def test_a_verifier_passes_or_says_why_and_nothing_else(provider: str, body: bytes, headers: list[tuple[str, str]], secrets: list[str]) -> None:
    lowered = {}
    for name, value in headers:
        lowered.setdefault(name.lower(), value)
    try:
        providers.verify(provider, body, lowered, secrets)
    except providers.SignatureError as exc:
        assert exc.message and not any(secret in exc.message for secret in secrets)


@settings(max_examples=150, deadline=None)
@given(provider=st.sampled_from(providers.PROVIDERS), body=bodies.filter(_utf8))
def test_a_correctly_signed_body_always_verifies(provider: str, body: bytes) -> None:
    secret = providers.generate_secret(provider)
    providers.verify(provider, body, dict(_sign(provider, body, secret)), ["whsec_other" if provider != "github" else "x", secret])


@settings(max_examples=200, deadline=None)
@given(provider=st.sampled_from(providers.PROVIDERS), payload=st.dictionaries(st.text(max_size=12), _json_values, max_size=6), headers=headers_strategy)
def test_identify_takes_any_json_object(provider: str, payload: dict[str, Any], headers: list[tuple[str, str]]) -> None:
    identity = providers.identify(provider, json.dumps(payload).encode(), payload, dict(headers))
    assert 0 < len(identity.external_id) <= 255 and 0 < len(identity.type) <= 255


# --- the ingest route ---------------------------------------------------------------------------


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def sync_client(settings: Settings) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def sources(sync_client: TestClient[Litestar]) -> dict[str, dict[str, Any]]:
    tenant = sync_client.post("/api/v1/tenants", json={"name": "Fuzz"}, headers={"authorization": f"Bearer {OPERATOR_KEY}"}).json()
    auth = {"authorization": f"Bearer {tenant['api_key']}"}
    made = {}
    for provider in providers.PROVIDERS:
        made[provider] = sync_client.post("/api/v1/sources", json={"name": provider, "provider": provider}, headers=auth).json()
    made["auth"] = auth
    return made


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(provider=st.sampled_from(providers.PROVIDERS), body=bodies, headers=headers_strategy, sign=st.booleans(), data=st.data())
def test_the_ingest_route_never_fails_and_never_stores_unverified(
    sync_client: TestClient[Litestar], sources: dict[str, dict[str, Any]], provider: str, body: bytes,
    headers: list[tuple[str, str]], sign: bool, data: st.DataObject,
) -> None:
    source = sources[provider]
    signed = sign and _utf8(body)
    if signed:  # a valid signature, placed among the random (and possibly duplicated) headers
        headers = headers + _sign(provider, body, source["secret"])
        headers = data.draw(st.permutations(headers))
    path = "/ingest/" + source["ingest_url"].rsplit("/", 1)[1]
    raw = [(name, value.encode("latin-1")) for name, value in headers]  # bytes: any latin-1 value goes on the wire
    response = sync_client.post(path, content=body, headers=raw)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code < 300:
        # Only a request carrying the real signature gets in. The headers as the route saw them:
        # Litestar's TestClient folds repeated headers into one "a, b" value (httpx's ``items()``).
        seen = {name.lower(): value for name, value in httpx.Headers(raw).items()}
        providers.verify(provider, body, seen, [source["secret"]])
    else:
        assert response.headers["content-type"].startswith("application/problem+json"), response.text


def test_huge_bodies_are_refused_before_they_are_read(sync_client: TestClient[Litestar], sources: dict[str, dict[str, Any]]) -> None:
    path = "/ingest/" + sources["stripe"]["ingest_url"].rsplit("/", 1)[1]
    body = b'{"id": "evt_huge", "pad": "' + b"x" * MAX_BODY + b'"}'
    response = sync_client.post(path, content=body, headers=_sign("stripe", body, sources["stripe"]["secret"]))
    assert response.status_code == 413 and response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_with_a_valid_signature_is_a_400(sync_client: TestClient[Litestar], sources: dict[str, dict[str, Any]], depth: int) -> None:
    """Regression: msgspec raises RecursionError (not DecodeError) past its depth limit: it was a 500."""
    path = "/ingest/" + sources["hmac_sha256"]["ingest_url"].rsplit("/", 1)[1]
    body = b'{"id": "evt_deep", "x": ' + b"[" * depth + b"]" * depth + b"}"
    response = sync_client.post(path, content=body, headers=_sign("hmac_sha256", body, sources["hmac_sha256"]["secret"]))
    assert response.status_code == 400, response.text
    assert response.json()["type"].endswith("invalid-json")
    events = sync_client.get("/api/v1/events", headers=sources["auth"]).json()["data"]
    assert events == []
