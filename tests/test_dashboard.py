"""Dashboard routes on both backends: login and its throttle, the session guard on every page and
form, CSRF on every form, tenant isolation (another tenant's ids answer 404), and each form's effect."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable
from html import unescape
from ipaddress import ip_network
from typing import Any, get_args

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from dashboard import overview as overview_module
from dashboard.accounts import operator_account_change
from dashboard.login import client_address
from dashboard.models import User
from gateway.cli import main as cli
from gateway.database import create_engine, session_factory, utcnow
from gateway.events.models import Delivery
from gateway.problems import render_problem
from gateway.settings import get_settings
from ml.online.models import Anomaly
from tenants.models import ApiKey
from tenants.secrets import MAX_ACTIVE_SECRETS
from tenants.sources.schemas import Provider
from tests.conftest import Stack, TenantHandle, ingest_path, new_source, new_tenant
from tests.support.dashboard import PASSWORD, SESSION, Browser, add_user, browser_for, csrf_field, log_in
from tests.support.receiver import Script, Server
from tests.support.stripe_events import signed_stripe, stripe_event, stripe_signature

PAGES = ["/dashboard/", "/dashboard/sources", "/dashboard/endpoints", "/dashboard/endpoints/new", "/dashboard/events",
         "/dashboard/dead-letters", "/dashboard/replays", "/dashboard/anomalies", "/dashboard/api-keys", "/dashboard/team",
         "/dashboard/account"]

# A signing secret on a page: base64 (Standard Webhooks) or url-safe base64 (Stripe sources).
_SECRET = re.compile(r"(whsec_[A-Za-z0-9+/=_-]+)")


def _errors(html: str) -> list[str]:
    return [unescape(text) for text in re.findall(r'class="error"[^>]*>([^<]+)<', html)]


async def _user(settings: Any, tenant: TenantHandle, email: str) -> None:
    await add_user(settings.database_url, tenant.id, email)


@pytest.fixture
async def signed_in(stack: Stack) -> Callable[..., Any]:
    async def make(name: str = "Acme") -> tuple[TenantHandle, Browser]:
        tenant = await new_tenant(stack.client, name)
        return tenant, await browser_for(stack.client, stack.settings.database_url, tenant.id, name)

    return make


@pytest.mark.parametrize(
    ("failure", "status"),
    [(OperationalError("SELECT 1", {}, ConnectionRefusedError("the database is down")), 503), (RuntimeError("a bug"), 500)],
)
async def test_a_page_that_fails_is_an_error_page_not_json(
    signed_in: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, failure: Exception, status: int
) -> None:
    """The dashboard's own answer, with its headers (no-store, no framing), and nothing of the error shown."""
    _tenant, browser = await signed_in()

    async def fails(*_args: Any, **_kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(overview_module, "last_day", fails)
    response = await browser.get("/dashboard/")
    assert response.status_code == status and response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store" and response.headers["x-frame-options"] == "DENY"
    assert "Something went wrong on our side" in response.text and "a bug" not in response.text


async def test_an_unknown_dashboard_url_or_method_is_a_page_and_the_api_keeps_its_problems(signed_in: Callable[..., Any]) -> None:
    _tenant, browser = await signed_in()
    for response in (await browser.get("/dashboard/no-such-page"), await browser.get("/dashboard/team/invite")):  # the last: POST only
        assert response.status_code in (404, 405) and response.headers["content-type"].startswith("text/html"), response.text
        assert response.headers["cache-control"] == "no-store" and response.headers["x-frame-options"] == "DENY"
    api = await browser.client.get("/api/v1/no-such-route")
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/problem+json")


async def test_every_page_and_form_needs_a_session(stack: Stack) -> None:
    for path in PAGES:
        response = await stack.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/dashboard/login?next=/dashboard"), path
    response = await stack.client.post("/dashboard/endpoints", data={"url": "http://127.0.0.1:9/"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/dashboard/login")
    stack.client.cookies.set(SESSION, "made-up.signature")
    forged = await stack.client.get("/dashboard/", follow_redirects=False)
    assert forged.status_code == 303
    filtered = await stack.client.get("/dashboard/events?type=invoice.paid&status=failed", follow_redirects=False)
    assert filtered.headers["location"] == "/dashboard/login?next=/dashboard/events%3Ftype%3Dinvoice.paid%26status%3Dfailed"


async def test_login_wrong_password_csrf_open_redirect_and_logout(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    await _user(stack.settings, tenant, "ana@example.com")
    wrong = await log_in(stack.client, "ana@example.com", "not the password")
    assert wrong.status_code == 400 and "Wrong email or password." in _errors(wrong.text)
    unknown = await log_in(stack.client, "nobody@example.com")
    assert unknown.status_code == 400 and SESSION not in unknown.cookies

    stack.client.cookies.clear()
    no_token = await stack.client.post("/dashboard/login", data={"email": "ana@example.com", "password": PASSWORD})
    assert no_token.status_code == 403 and SESSION not in no_token.cookies

    away = await log_in(stack.client, "ANA@example.com", next="https://evil.example/")
    assert away.status_code == 303 and away.headers["location"] == "/dashboard"
    cookie = away.cookies[SESSION]
    set_cookie = away.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    stack.client.cookies.set(SESSION, cookie)
    overview = await stack.client.get("/dashboard/")
    assert overview.status_code == 200 and "ana@example.com" in overview.text
    assert overview.headers["cache-control"] == "no-store" and overview.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in overview.headers["content-security-policy"]

    out = await stack.client.post("/dashboard/logout", data={"csrf_token": csrf_field(overview.text)}, follow_redirects=False)
    assert out.status_code == 303
    stack.client.cookies.set(SESSION, cookie)  # a copied cookie dies with its server-side session
    assert (await stack.client.get("/dashboard/", follow_redirects=False)).status_code == 303


async def test_login_is_rate_limited(stack_factory: Callable[..., Any]) -> None:
    stack = await stack_factory(dashboard_login_limit="0.001/3")
    tenant = await new_tenant(stack.client)
    await _user(stack.settings, tenant, "bo@example.com")
    statuses = [(await log_in(stack.client, "bo@example.com", "wrong password!")).status_code for _ in range(4)]
    assert statuses == [400, 400, 400, 429]
    refused = await log_in(stack.client, "bo@example.com")  # even the right password waits now
    assert refused.status_code == 429 and SESSION not in refused.cookies
    assert "Too many attempts" in _errors(refused.text)[0]


def _behind_the_proxy(stack: Stack) -> None:
    """Every request reaches the app from a proxy at 10.0.0.5, as behind an Ingress."""
    app, inner = stack.client.app, stack.client.app.asgi_handler

    async def through_the_proxy(scope: Any, receive: Any, send: Any) -> None:
        await inner({**scope, "client": ("10.0.0.5", 40000)} if scope["type"] == "http" else scope, receive, send)

    app.asgi_handler = through_the_proxy


async def test_someone_elses_failures_do_not_lock_out_a_browser_that_signed_in_before(stack_factory: Callable[..., Any]) -> None:
    """Anyone who knows an email can spend its login budget; a browser that signed in as it before
    (its device cookie) is held to its own address's limit only."""
    stack = await stack_factory(dashboard_login_limit="0.001/3", trusted_proxies="10.0.0.0/8")
    _behind_the_proxy(stack)
    tenant = await new_tenant(stack.client)
    await _user(stack.settings, tenant, "bo@example.com")
    client = stack.client

    async def attempt(address: str, password: str = PASSWORD, device: str | None = None) -> int:
        client.cookies.clear()
        client.headers["x-forwarded-for"] = address
        form = await client.get("/dashboard/login")
        if device is not None:
            client.cookies.set("hookgate_device", device)
        data = {"email": "bo@example.com", "password": password, "csrf_token": csrf_field(form.text), "next": "/dashboard/"}
        response = await client.post("/dashboard/login", data=data, follow_redirects=False)
        return response.status_code if response.status_code != 303 else response.cookies.get("hookgate_device") or 303

    owner = await attempt("198.51.100.7")  # the owner's browser signs in once
    assert isinstance(owner, str)
    assert [await attempt("203.0.113.9", "wrong password!") for _ in range(3)] == [400, 400, 429]  # someone spends the budget
    assert await attempt("192.0.2.1") == 429  # a browser that never signed in: locked out with the right password
    assert await attempt("192.0.2.1", device=owner.replace(".", "x.", 1)) == 429  # a forged device cookie changes nothing
    assert isinstance(await attempt("192.0.2.1", device=owner), str)  # the owner's browser signs in
    # The cookie has a budget of its own: guessing with it is bounded as with the email key.
    assert [await attempt("198.18.0.1", "wrong password!", device=owner) for _ in range(3)] == [400, 400, 429]

    # A password change voids it: whoever signed in with the old password is held to the email's limit again.
    await _user(stack.settings, tenant, "al@example.com")
    client.cookies.clear()
    client.headers["x-forwarded-for"] = "198.51.100.8"
    old_device = (await log_in(client, "al@example.com")).cookies["hookgate_device"]
    client.headers["x-forwarded-for"] = "203.0.113.10"
    assert [(await log_in(client, "al@example.com", "wrong password!")).status_code for _ in range(3)] == [400, 400, 429]
    await operator_account_change(stack.settings.database_url, "al@example.com", "a brand new passphrase")
    for address in ("192.0.2.50", "192.0.2.51"):
        client.cookies.clear()
        client.headers["x-forwarded-for"] = address
        form = await client.get("/dashboard/login")
        client.cookies.set("hookgate_device", old_device)
        data = {"email": "al@example.com", "password": "a brand new passphrase", "csrf_token": csrf_field(form.text), "next": "/dashboard/"}
        assert (await client.post("/dashboard/login", data=data, follow_redirects=False)).status_code == 429


async def test_behind_a_trusted_proxy_the_login_limit_counts_each_client(stack_factory: Callable[..., Any]) -> None:
    """Behind an Ingress every connection is the proxy's: keyed on it, one client's failed logins
    locked every user out. The client is the last untrusted X-Forwarded-For hop; what a client
    writes to the left of it does not change whose attempts it spends."""
    stack = await stack_factory(dashboard_login_limit="0.001/3", trusted_proxies="10.0.0.0/8")
    _behind_the_proxy(stack)
    tenant = await new_tenant(stack.client)
    await _user(stack.settings, tenant, "bo@example.com")
    stack.client.headers["x-forwarded-for"] = "203.0.113.9"  # the attacker, one unknown email after another
    statuses = [(await log_in(stack.client, f"nobody{n}@example.com", "wrong password!")).status_code for n in range(4)]
    assert statuses == [400, 400, 400, 429]
    stack.client.headers["x-forwarded-for"] = "198.51.100.7, 203.0.113.9"  # a forged hop to the left: still the attacker
    assert (await log_in(stack.client, "nobody9@example.com", "wrong password!")).status_code == 429
    stack.client.headers["x-forwarded-for"] = "198.51.100.7, 10.0.0.9"  # the user, through two proxies
    assert (await log_in(stack.client, "bo@example.com")).status_code == 303


def test_the_client_address_is_the_last_hop_no_trusted_proxy_wrote() -> None:
    proxies = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))
    assert client_address("203.0.113.9", ["198.51.100.7"], proxies) == "203.0.113.9"  # not from a proxy: XFF ignored
    assert client_address("10.0.0.5", ["198.51.100.7"], ()) == "10.0.0.5"  # no proxy trusted
    assert client_address("10.0.0.5", ["6.6.6.6, 198.51.100.7"], proxies) == "198.51.100.7"
    assert client_address("fd00::1", ["198.51.100.7, 10.1.2.3", "fd00::2"], proxies) == "198.51.100.7"  # headers in order
    assert client_address("10.0.0.5", ["10.0.0.6", "not-an-ip"], proxies) == "not-an-ip"  # garbage is no proxy
    assert client_address("10.0.0.5", [], proxies) == "10.0.0.5"


async def test_every_form_refuses_a_post_without_the_csrf_token(stack: Stack, signed_in: Callable[..., Any]) -> None:
    tenant, browser = await signed_in()
    endpoint = await stack.endpoint(tenant, "http://127.0.0.1:9/hook")
    source = await new_source(stack.client, tenant)
    forms = [
        "/dashboard/logout", "/dashboard/sources", f"/dashboard/sources/{source['id']}/reveal",
        f"/dashboard/sources/{source['id']}/rotate", "/dashboard/endpoints", f"/dashboard/endpoints/{endpoint['id']}",
        f"/dashboard/endpoints/{endpoint['id']}/enabled", f"/dashboard/endpoints/{endpoint['id']}/delete",
        f"/dashboard/endpoints/{endpoint['id']}/rotate", f"/dashboard/endpoints/{endpoint['id']}/reveal",
        f"/dashboard/endpoints/{endpoint['id']}/test", f"/dashboard/events/{uuid.uuid4()}/replay",
        "/dashboard/dead-letters/redrive", "/dashboard/dead-letters/purge", f"/dashboard/anomalies/{uuid.uuid4()}/acknowledge",
        "/dashboard/api-keys", f"/dashboard/api-keys/{uuid.uuid4()}/revoke", "/dashboard/team/invite",
        f"/dashboard/team/{uuid.uuid4()}/remove", f"/dashboard/team/invites/{uuid.uuid4()}/withdraw", "/dashboard/account/password",
    ]
    for path in forms:
        response = await browser.post(path, {"url": "http://127.0.0.1:9/x", "name": "x", "enabled": "false"}, csrf=False)
        assert response.status_code == 403, path
    wrong = await browser.post("/dashboard/endpoints", {"url": "http://127.0.0.1:9/x", "csrf_token": "guess"}, csrf=False)
    assert wrong.status_code == 403
    # nothing happened: still one endpoint, enabled, and the session still works
    listed = (await stack.client.get("/api/v1/endpoints", headers=tenant.auth)).json()["data"]
    assert [(e["id"], e["enabled"]) for e in listed] == [(endpoint["id"], True)]
    assert (await browser.get("/dashboard/")).status_code == 200


async def test_another_tenants_pages_and_actions_answer_404(stack: Stack, signed_in: Callable[..., Any]) -> None:
    async with Server(Script()) as receiver:
        tenant_a, _browser_a = await signed_in("Alpha")
        _tenant_b, browser_b = await signed_in("Beta")
        endpoint = await stack.endpoint(tenant_a, f"{receiver.url}/a")
        source = await new_source(stack.client, tenant_a)
        event_id = await stack.ingest(source)
        [delivery] = await stack.settled(tenant_a, 1)
        anomaly_id = await _anomaly(stack, tenant_a)
        key_id = await _api_key_id(stack, tenant_a)
        pages = [f"/dashboard/endpoints/{endpoint['id']}", f"/dashboard/events/{event_id}", f"/dashboard/sources/{source['id']}",
                 f"/dashboard/anomalies/{anomaly_id}"]
        for path in pages:
            response = await browser_b.get(path)
            assert response.status_code == 404, path
            assert "There is nothing here" in response.text
        actions = [
            (f"/dashboard/endpoints/{endpoint['id']}", {"url": "http://127.0.0.1:9/b"}),
            (f"/dashboard/endpoints/{endpoint['id']}/enabled", {"enabled": "false"}),
            (f"/dashboard/endpoints/{endpoint['id']}/rotate", {}), (f"/dashboard/endpoints/{endpoint['id']}/reveal", {}),
            (f"/dashboard/endpoints/{endpoint['id']}/test", {}), (f"/dashboard/endpoints/{endpoint['id']}/delete", {}),
            (f"/dashboard/sources/{source['id']}/reveal", {}), (f"/dashboard/sources/{source['id']}/rotate", {}),
            (f"/dashboard/events/{event_id}/replay", {}), (f"/dashboard/anomalies/{anomaly_id}/acknowledge", {}),
            (f"/dashboard/api-keys/{key_id}/revoke", {}), ("/dashboard/dead-letters/purge", {"delivery_id": delivery["id"]}),
            ("/dashboard/dead-letters/redrive", {"scope": "selected", "delivery_id": delivery["id"]}),
        ]
        for path, data in actions:
            response = await browser_b.post(path, data)
            assert response.status_code == 404, path
            assert "whsec_" not in response.text
        # B's lists do not show A's rows, and A's endpoint, key and delivery are untouched
        for path, marker in [("/dashboard/events", event_id), ("/dashboard/endpoints", endpoint["id"]),
                             ("/dashboard/sources", source["id"])]:
            assert marker not in (await browser_b.get(path)).text
        got = (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant_a.auth)).json()
        assert got["enabled"] is True and got["url"] == f"{receiver.url}/a"
        assert (await stack.client.get("/api/v1/events", headers=tenant_a.auth)).status_code == 200
        assert len(receiver.requests) == 1  # no test event, no replay went out


async def _anomaly(stack: Stack, tenant: TenantHandle) -> str:
    engine = create_engine(stack.settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            row = Anomaly(tenant_id=uuid.UUID(tenant.id), kind="card_testing", detector="card_testing", severity="high",
                          score=0.9, explanation=["41 failed charges from 38 cards in one minute"], features={"charge_failed": 41.0},
                          started_at=utcnow(), last_seen_at=utcnow())
            session.add(row)
            await session.commit()
            return str(row.id)
    finally:
        await engine.dispose()


async def _api_key_id(stack: Stack, tenant: TenantHandle) -> str:
    engine = create_engine(stack.settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            return str(await session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == uuid.UUID(tenant.id))))
    finally:
        await engine.dispose()


async def test_endpoint_forms(stack: Stack, signed_in: Callable[..., Any]) -> None:
    async with Server(Script()) as receiver:
        tenant, browser = await signed_in()
        bad = await browser.post("/dashboard/endpoints", {"url": "ftp://example.com/x", "event_types": "*"})
        assert bad.status_code == 400 and _errors(bad.text) == ["URL scheme must be http or https"]
        bad_types = await browser.post("/dashboard/endpoints", {"url": f"{receiver.url}/x", "event_types": "in*voice"})
        assert bad_types.status_code == 400 and "may only end an entry" in _errors(bad_types.text)[0]
        bad_rate = await browser.post("/dashboard/endpoints", {"url": f"{receiver.url}/x", "rate_limit_per_second": "-1"})
        assert bad_rate.status_code == 400 and "above 0" in _errors(bad_rate.text)[0]

        created = await browser.follow(await browser.post(
            "/dashboard/endpoints", {"url": f"{receiver.url}/hook", "event_types": "charge.*\ninvoice.paid",
                                     "rate_limit_per_second": "5", "description": "billing"}))
        assert created.status_code == 200 and "Endpoint created" in created.text
        secret = _SECRET.search(created.text).group(1)
        [endpoint] = (await stack.client.get("/api/v1/endpoints", headers=tenant.auth)).json()["data"]
        assert (endpoint["event_types"], endpoint["rate_limit_per_second"], endpoint["description"]) == (
            ["charge.*", "invoice.paid"], 5.0, "billing")
        path = f"/dashboard/endpoints/{endpoint['id']}"
        revealed = await browser.post(f"{path}/reveal")
        assert secret in revealed.text

        saved = await browser.post(path, {"url": f"{receiver.url}/v2", "event_types": "*", "rate_limit_per_second": ""})
        assert saved.status_code == 303 and saved.headers["location"] == f"{path}?done=endpoint-saved"
        after = (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant.auth)).json()
        assert (after["url"], after["event_types"], after["rate_limit_per_second"]) == (f"{receiver.url}/v2", ["*"], None)
        kept = await browser.post(path, {"url": "not a url", "event_types": "*"})
        assert kept.status_code == 400 and 'value="not a url"' in kept.text and _errors(kept.text)
        emptied = await browser.post(path, {"url": f"{receiver.url}/v2", "event_types": ""})  # not "every type"
        assert emptied.status_code == 400 and _errors(emptied.text) == ["Give at least one event type, or * for every type"]
        assert (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant.auth)).json()["event_types"] == ["*"]

        await browser.post(f"{path}/enabled", {"enabled": "false"})
        assert (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant.auth)).json()["enabled"] is False
        await browser.post(f"{path}/enabled", {"enabled": "true"})
        assert (await stack.client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=tenant.auth)).json()["enabled"] is True

        rotated = await browser.follow(await browser.post(f"{path}/rotate"))
        new_secret = _SECRET.search(rotated.text).group(1)
        assert new_secret != secret

        sent = await browser.post(f"{path}/test")
        assert sent.status_code == 303
        await stack.settled(tenant, 1)
        detail = await browser.get(path)
        assert "hookgate.test" in detail.text and ">200<" in detail.text

        gone = await browser.post(f"{path}/delete")
        assert gone.status_code == 303 and gone.headers["location"] == "/dashboard/endpoints?done=endpoint-deleted"
        assert (await browser.get(path)).status_code == 404


async def test_sources_events_replay_and_api_keys(stack: Stack, signed_in: Callable[..., Any]) -> None:
    async with Server(Script()) as receiver:
        tenant, browser = await signed_in()
        empty = await browser.get("/dashboard/events")
        assert "No event yet" in empty.text
        form = (await browser.get("/dashboard/sources")).text
        assert all(f'<option value="{provider}"' in form for provider in get_args(Provider))  # each with a setup hint
        missing = await browser.post("/dashboard/sources", {"name": "", "provider": "stripe"})
        assert missing.status_code == 400 and _errors(missing.text) == ["Give the source a name (up to 200 characters)."]
        created = await browser.follow(await browser.post("/dashboard/sources", {"name": "Stripe live", "provider": "stripe"}))
        assert created.status_code == 200 and "Developers → Webhooks" in created.text
        secret = _SECRET.search(created.text).group(1)
        [source] = (await stack.client.get("/api/v1/sources", headers=tenant.auth)).json()["data"]
        assert source["ingest_url"] in (await browser.get("/dashboard/sources")).text
        bad_own = await browser.post(f"/dashboard/sources/{source['id']}/rotate", {"secret": "not-a-whsec"})
        assert bad_own.status_code == 400 and _errors(bad_own.text)
        assert "<details open>" in bad_own.text and 'value="not-a-whsec"' in bad_own.text  # shown, and kept to correct
        own = "whsec_" + "A" * 32
        rotated = await browser.follow(await browser.post(f"/dashboard/sources/{source['id']}/rotate", {"secret": own}))
        assert own in rotated.text
        assert "2 active secrets." in (await browser.get(f"/dashboard/sources/{source['id']}")).text
        revealed = await browser.post(f"/dashboard/sources/{source['id']}/reveal")
        assert own in revealed.text and secret in revealed.text  # the old one still verifies during the grace period

        await stack.endpoint(tenant, f"{receiver.url}/hook")
        event = stripe_event("charge_succeeded")
        event_id = await stack.ingest({**source, "secret": own}, event)
        await stack.settled(tenant, 1)
        listed = await browser.get("/dashboard/events", type="charge.succeeded", status="succeeded", window="24h")
        assert event["id"] in listed.text
        assert event["id"] not in (await browser.get("/dashboard/events", type="invoice.paid")).text
        assert event["id"] not in (await browser.get("/dashboard/events", status="dead")).text
        for found in ({"type": "charge.*"}, {"type": " charge.succeeded "}, {"q": event["id"]}, {"q": event_id}):
            assert f"/dashboard/events/{event_id}" in (await browser.get("/dashboard/events", **found)).text, found
        for missed in ({"type": "charge"}, {"type": "invoice.*"}, {"q": "evt_none"}, {"q": str(uuid.uuid4())}):
            assert f"/dashboard/events/{event_id}" not in (await browser.get("/dashboard/events", **missed)).text, missed
        detail = await browser.get(f"/dashboard/events/{event_id}")
        assert detail.status_code == 200 and '"object": "event"' in unescape(detail.text) and "succeeded" in detail.text

        replayed = await browser.post(f"/dashboard/events/{event_id}/replay")
        assert replayed.headers["location"] == f"/dashboard/events/{event_id}?done=replayed"
        await stack.settled(tenant, 2)
        assert len(receiver.requests) == 2 and receiver.requests[1].body == receiver.requests[0].body

        named = await browser.post("/dashboard/api-keys", {"name": ""})
        assert named.status_code == 400 and _errors(named.text)
        made = await browser.follow(await browser.post("/dashboard/api-keys", {"name": "CI"}))
        key = re.search(r"(hgk_[A-Za-z0-9_-]+)", made.text).group(1)
        auth = {"authorization": f"Bearer {key}"}
        assert (await stack.client.get("/api/v1/events", headers=auth)).status_code == 200
        key_id = re.search(r'/dashboard/api-keys/([0-9a-f-]{36})/revoke', made.text).group(1)
        assert key not in (await browser.get("/dashboard/api-keys")).text  # shown once
        await browser.post(f"/dashboard/api-keys/{key_id}/revoke")
        assert (await stack.client.get("/api/v1/events", headers=auth)).status_code == 401


async def test_what_a_post_makes_is_shown_once_after_its_redirect(stack: Stack, signed_in: Callable[..., Any]) -> None:
    """Creating and rotating answer with a redirect, so a reload repeats nothing; the page it leads
    to shows the new secret once, from an encrypted cookie bound to the session and to that page."""
    tenant, browser = await signed_in()
    _other, stranger = await signed_in("Other")
    posted = await browser.post("/dashboard/api-keys", {"name": "CI"})
    assert posted.status_code == 303 and posted.headers["location"] == "/dashboard/api-keys?done=key-created"
    carried = dict(posted.cookies.items())
    assert "hgk_" not in str(carried) and "hgk_" not in posted.headers["location"]  # encrypted, and not in the URL
    new_key = re.compile(r'id="new-key">(hgk_[^<]+)<')
    assert not new_key.findall((await stranger.get("/dashboard/api-keys", cookies=carried)).text)  # another session's
    elsewhere = await browser.get("/dashboard/events", cookies=carried)  # e.g. another tab's refresh on its way
    assert "hookgate_shown" not in elsewhere.headers.get("set-cookie", "")  # leaves it for its page
    shown = await browser.get("/dashboard/api-keys", cookies=carried)
    [key] = new_key.findall(shown.text)
    assert 'hookgate_shown="";' in shown.headers["set-cookie"] and "Max-Age=0" in shown.headers["set-cookie"]  # once
    assert (await stack.client.get("/api/v1/events", headers={"authorization": f"Bearer {key}"})).status_code == 200
    assert (await browser.get("/dashboard/api-keys")).text.count('<td class="primary">CI</td>') == 1  # made once

    first = await browser.post("/dashboard/sources", {"name": "A", "provider": "stripe"})
    second = await browser.follow(await browser.post("/dashboard/sources", {"name": "B", "provider": "stripe"}))
    [secret_b] = _SECRET.findall(second.text)
    assert not _SECRET.findall((await browser.get(first.headers["location"].split("?")[0], cookies=dict(second.cookies.items()))).text)
    [secret_a] = _SECRET.findall((await browser.follow(first)).text)  # its own page shows it
    sources = (await stack.client.get("/api/v1/sources", headers=tenant.auth)).json()["data"]
    assert len(sources) == 2 and secret_a != secret_b


async def test_rotating_after_a_leak_stops_the_previous_secrets_now(stack: Stack, signed_in: Callable[..., Any]) -> None:
    tenant, browser = await signed_in()
    source = await new_source(stack.client, tenant)
    leaked = source["secret"]
    path = f"/dashboard/sources/{source['id']}/rotate"
    for _ in range(MAX_ACTIVE_SECRETS - 1):  # each rotation keeps the previous secrets in their grace period
        assert "keeps working through the grace period" in (await browser.follow(await browser.post(path, {}))).text
    full = await browser.post(path, {})
    assert full.status_code == 400 and "secrets are active" in _errors(full.text)[0]  # said, not a bare 400

    rotated = await browser.follow(await browser.post(path, {"expire_previous": "1"}))
    assert "The previous ones no longer verify" in rotated.text
    [fresh] = _SECRET.findall(rotated.text)
    assert "1 active secret." in (await browser.get(f"/dashboard/sources/{source['id']}")).text  # the expired are not counted
    body, headers = signed_stripe(stripe_event(), leaked)
    refused = await stack.client.post(ingest_path(source), content=body, headers=headers)
    assert refused.status_code == 400
    await stack.ingest({**source, "secret": fresh})

    endpoint = await stack.endpoint(tenant, "https://example.com/hook")
    path = f"/dashboard/endpoints/{endpoint['id']}"
    for _ in range(MAX_ACTIVE_SECRETS - 1):
        await browser.post(f"{path}/rotate", {})
    full = await browser.post(f"{path}/rotate", {})
    assert full.status_code == 409 and "secrets are active" in _errors(full.text)[0]
    assert "The previous ones no longer sign" in (await browser.follow(await browser.post(f"{path}/rotate", {"expire_previous": "1"}))).text
    assert len(_SECRET.findall((await browser.post(f"{path}/reveal")).text)) == 1


async def test_an_event_nested_as_deep_as_ingest_accepts_has_a_page(stack: Stack, signed_in: Callable[..., Any]) -> None:
    """A payload nested 975 deep, which ingest accepted, once made its page a 500: it is shown as stored."""
    tenant, browser = await signed_in()
    source = await new_source(stack.client, tenant)
    event = stripe_event("charge_succeeded")
    body = (json.dumps(event)[:-1] + ', "deep": ' + "[" * 975 + "1" + "]" * 975 + "}").encode()
    headers = {"stripe-signature": stripe_signature(body, source["secret"]), "content-type": "application/json"}
    stored = await stack.client.post(ingest_path(source), content=body, headers=headers)
    assert stored.status_code == 200, stored.text

    detail = await browser.get(f"/dashboard/events/{stored.json()['id']}")

    assert detail.status_code == 200 and event["id"] in detail.text
    assert unescape(detail.text).count("[") >= 950


def test_an_invitation_token_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    token = "g5DAHqYyHZL9P_z-Zh3gmXFOrYD6mOpv3x4BrdrolL0"
    with caplog.at_level(logging.INFO, logger="hookgate.errors"):
        render_problem(RuntimeError("a bug"), f"/dashboard/invite/{token}", None)
    assert caplog.records and token[:4] in caplog.text and token not in caplog.text


async def test_dead_letters_redrive_purge_and_anomalies(stack_factory: Callable[..., Any], signed_in: Callable[..., Any]) -> None:
    stack = await stack_factory()
    script = Script(answers=[(500, {}, 0.0)])
    async with Server(script) as receiver:
        tenant, browser = await signed_in()
        await stack.endpoint(tenant, f"{receiver.url}/hook")
        source = await new_source(stack.client, tenant)
        for _ in range(3):
            await stack.ingest(source)
        dead = await stack.settled(tenant, 3, status="dead")
        assert "Dead: HTTP 500" in (await browser.get(f"/dashboard/events/{dead[0]['event_id']}")).text  # says why
        page = await browser.get("/dashboard/dead-letters")
        assert all(d["id"] in page.text for d in dead) and "Redrive all 3 that match" in page.text
        none = await browser.post("/dashboard/dead-letters/redrive", {"scope": "selected"})
        assert none.headers["location"] == "/dashboard/dead-letters?error=none-selected"

        script.answers = [(200, {}, 0.0)]
        started = await browser.post("/dashboard/dead-letters/redrive", {"scope": "selected", "delivery_id": dead[0]["id"]})
        assert started.status_code == 303 and started.headers["location"].startswith("/dashboard/replays")
        await stack.settled(tenant, 1)
        assert "redrive" in (await browser.get("/dashboard/replays")).text
        remaining = {d["id"] for d in await stack.deliveries(tenant, status="dead")}
        assert remaining == {dead[1]["id"], dead[2]["id"]}

        # dead[0] was redriven meanwhile (as from another tab): skipped, and the rest of the selection still goes
        purged = await browser.post("/dashboard/dead-letters/purge", {"delivery_id": [dead[0]["id"], dead[1]["id"]], "window": "24h"})
        assert purged.status_code == 303 and purged.headers["location"] == "/dashboard/dead-letters?window=24h&done=purged"
        left = {d["id"]: d["status"] for d in await stack.deliveries(tenant)}
        assert dead[1]["id"] not in left and left[dead[0]["id"]] == "succeeded"
        await browser.post("/dashboard/dead-letters/redrive", {"scope": "all"})
        await stack.settled(tenant, 2)
        assert await stack.deliveries(tenant, status="dead") == []
        for _ in range(200):  # the jobs see their deliveries through, then finish
            jobs = (await stack.client.get("/api/v1/replays", headers=tenant.auth)).json()["data"]
            if all(job["status"] == "completed" for job in jobs):
                break
            await asyncio.sleep(0.05)
        assert "/cancel" not in (await browser.get("/dashboard/replays")).text  # only queued or running jobs offer it
        cancelled = await browser.post(f"/dashboard/replays/{jobs[0]['id']}/cancel")  # as from a page loaded earlier
        assert cancelled.headers["location"] == "/dashboard/replays?done=replay-finished"
        assert (await browser.post(f"/dashboard/replays/{uuid.uuid4()}/cancel")).status_code == 404

        anomaly_id = await _anomaly(stack, tenant)
        assert '<span class="num">1</span> anomalies to look at' in (await browser.get("/dashboard/")).text
        assert "card testing" in (await browser.get("/dashboard/anomalies")).text
        assert "41 failed charges" in (await browser.get(f"/dashboard/anomalies/{anomaly_id}")).text
        await browser.post(f"/dashboard/anomalies/{anomaly_id}/acknowledge")
        engine = create_engine(stack.settings.database_url, pool_size=1)
        try:
            async with session_factory(engine)() as session:
                assert (await session.get(Anomaly, uuid.UUID(anomaly_id))).acknowledged_at is not None
                assert await session.scalar(select(Delivery.id).where(Delivery.id == uuid.UUID(dead[1]["id"]))) is None
        finally:
            await engine.dispose()
        overview = await browser.get("/dashboard/")
        assert "<svg" in overview.text and '<span class="num">0</span> anomalies to look at' in overview.text  # acknowledged


async def test_overview_counts_the_last_day(stack: Stack, signed_in: Callable[..., Any]) -> None:
    async with Server(Script()) as receiver:
        tenant, browser = await signed_in()
        assert "Get started in three steps" in (await browser.get("/dashboard/")).text
        await stack.endpoint(tenant, f"{receiver.url}/hook")
        source = await new_source(stack.client, tenant)
        for _ in range(2):
            await stack.ingest(source)
        await stack.settled(tenant, 2)
        text = (await browser.get("/dashboard/")).text
        assert '<span class="num">2</span> events in 24 h' in text
        assert "2 of 2 finished deliveries succeeded" in text
        assert re.search(r"<title>\d\d:00 UTC: 2 events received</title>", text)


async def test_the_overview_tiles_lead_to_what_they_count(stack_factory: Callable[..., Any]) -> None:
    """Waiting is pending or retrying ("failed" to the API); the event count is of the tenant's
    sources, not Hookgate's own notices; a disabled endpoint is no open circuit to look at."""
    stack: Stack = await stack_factory(retry_schedule="0,3600", breaker_failure_threshold=1, breaker_min_volume=1)
    tenant = await new_tenant(stack.client, "Acme")
    browser = await browser_for(stack.client, stack.settings.database_url, tenant.id, "Acme")
    async with Server(Script([(500, {}, 0.0)])) as receiver:
        endpoint = await stack.endpoint(tenant, f"{receiver.url}/hook")
        stripe = await stack.ingest(await new_source(stack.client, tenant))
        assert (await browser.post(f"/dashboard/endpoints/{endpoint['id']}/test")).status_code == 303
        await stack.settled(tenant, 2, status="failed")  # each tried once, retrying in an hour (or its circuit's probe)
    overview = (await browser.get("/dashboard/")).text
    assert '<span class="num">1</span> events in 24 h' in overview and '<span class="num">1</span> open circuits' in overview
    backlog = int(re.search(r'<span class="num">(\d+)</span> events waiting for delivery', overview).group(1))

    def listed(html: str) -> set[str]:
        return set(re.findall(r'href="/dashboard/events/([0-9a-f-]{36})"', html))

    waiting = listed((await browser.get("/dashboard/events", status="waiting")).text)
    retrying = listed((await browser.get("/dashboard/events", status="failed")).text)
    assert stripe in retrying and retrying <= waiting and len(waiting) == backlog >= 2
    assert listed((await browser.get("/dashboard/events", window="24h", source_id="sources")).text) == {stripe}
    notices = listed((await browser.get("/dashboard/events", source_id="hookgate")).text)  # the test event, the circuit's notice
    assert notices and stripe not in notices and waiting - {stripe} <= notices

    joined = await browser.post(f"/dashboard/events/{stripe}/replay")  # its delivery still waits to be retried
    assert joined.headers["location"] == f"/dashboard/events/{stripe}?done=replay-joined"
    await browser.post(f"/dashboard/endpoints/{endpoint['id']}/enabled", {"enabled": "false"})
    assert '<span class="num">0</span> open circuits' in (await browser.get("/dashboard/")).text


async def test_a_teammate_joins_through_an_invitation(stack: Stack, signed_in: Callable[..., Any]) -> None:
    _tenant, inviter = await signed_in("Acme")
    _other, stranger = await signed_in("Other")
    taken = await inviter.post("/dashboard/team/invite", {"email": "not-an-email"})
    assert taken.status_code == 400 and _errors(taken.text) == ["Enter an email address like name@example.com."]
    made = await inviter.follow(await inviter.post("/dashboard/team/invite", {"email": "Zoe@Example.com"}))
    link = re.search(r'id="invite-link">([^<]+)<', made.text).group(1)
    path = link.removeprefix(stack.settings.public_url)
    assert path.startswith("/dashboard/invite/")
    assert "zoe@example.com" in (await inviter.get("/dashboard/team")).text
    assert "zoe@example.com" not in (await stranger.get("/dashboard/team")).text

    client = stack.client
    client.cookies.clear()
    assert (await client.get("/dashboard/invite/made-up-token")).status_code == 404
    form = await client.get(path)
    assert form.status_code == 200 and "zoe@example.com" in form.text
    refused = await client.post(path, data={"password": PASSWORD, "confirm": PASSWORD}, follow_redirects=False)
    assert refused.status_code == 403
    form = await client.get(path)
    token = csrf_field(form.text)
    differ = await client.post(path, data={"password": PASSWORD, "confirm": "something else", "csrf_token": token})
    assert differ.status_code == 400 and _errors(differ.text) == ["The two passwords differ."]
    short = await client.post(path, data={"password": "short", "confirm": "short", "csrf_token": csrf_field(differ.text)})
    assert short.status_code == 400 and _errors(short.text) == ["Use at least 10 characters."]
    joined = await client.post(path, data={"password": PASSWORD, "confirm": PASSWORD, "csrf_token": csrf_field(short.text)},
                               follow_redirects=False)
    assert joined.status_code == 303 and SESSION in joined.cookies
    assert "zoe@example.com" in (await client.get("/dashboard/")).text
    client.cookies.clear()
    assert (await client.get(path)).status_code == 404  # used up
    assert (await log_in(client, "zoe@example.com")).status_code == 303
    again = await inviter.post("/dashboard/team/invite", {"email": "zoe@example.com"})
    assert again.status_code == 400 and _errors(again.text) == ["This person already has an account."]


async def test_an_address_has_one_live_invitation_and_none_outlives_its_member(stack: Stack, signed_in: Callable[..., Any]) -> None:
    """Inviting again replaces the link; removing a member withdraws a link still pending for them,
    so a spare link cannot sign a removed teammate back up."""
    tenant, admin = await signed_in("Acme")

    async def invitation(email: str) -> str:
        made = await admin.follow(await admin.post("/dashboard/team/invite", {"email": email}))
        return re.search(r'id="invite-link">([^<]+)<', made.text).group(1).removeprefix(stack.settings.public_url)

    first, second = await invitation("carol@example.com"), await invitation("carol@example.com")
    assert (await admin.get("/dashboard/team")).text.count('invited</span>') == 1
    stack.client.cookies.clear()
    assert (await stack.client.get(first)).status_code == 404 and (await stack.client.get(second)).status_code == 200

    spare = await invitation("dave@example.com")
    await _user(stack.settings, tenant, "dave@example.com")  # the operator made the account meanwhile
    team = (await admin.get("/dashboard/team")).text
    dave = re.search(r'/dashboard/team/([0-9a-f-]{36})/remove" data-confirm="Remove dave@example.com', team).group(1)
    assert (await admin.post(f"/dashboard/team/{dave}/remove")).status_code == 303
    stack.client.cookies.clear()
    assert (await stack.client.get(spare)).status_code == 404
    assert 'invited</span>' in (await admin.get("/dashboard/team")).text  # carol's, untouched


async def test_a_teammate_is_removed_and_an_invitation_withdrawn(stack: Stack, signed_in: Callable[..., Any]) -> None:
    tenant, admin = await signed_in("Acme")
    _other, stranger = await signed_in("Other")
    await _user(stack.settings, tenant, "leaver@example.com")
    leaver = Browser(stack.client, (await log_in(stack.client, "leaver@example.com")).cookies[SESSION], "")
    assert (await leaver.get("/dashboard/")).status_code == 200
    team = (await admin.get("/dashboard/team")).text
    leaver_id = re.search(r'/dashboard/team/([0-9a-f-]{36})/remove" data-confirm="Remove leaver@example.com', team).group(1)
    assert (await stranger.post(f"/dashboard/team/{leaver_id}/remove")).status_code == 404  # another tenant's member

    removed = await admin.post(f"/dashboard/team/{leaver_id}/remove")
    assert removed.status_code == 303 and removed.headers["location"] == "/dashboard/team?done=teammate-removed"
    assert (await leaver.get("/dashboard/")).status_code == 303  # signed out at once
    assert (await log_in(stack.client, "leaver@example.com")).status_code == 400
    assert "leaver@example.com" not in (await admin.get("/dashboard/team")).text
    assert (await admin.post(f"/dashboard/team/{leaver_id}/remove")).status_code == 404

    made = await admin.follow(await admin.post("/dashboard/team/invite", {"email": "typo@exmaple.com"}))
    path = re.search(r'id="invite-link">([^<]+)<', made.text).group(1).removeprefix(stack.settings.public_url)
    invite_id = re.search(r'/dashboard/team/invites/([0-9a-f-]{36})/withdraw', made.text).group(1)
    assert (await stranger.post(f"/dashboard/team/invites/{invite_id}/withdraw")).status_code == 404
    assert (await admin.post(f"/dashboard/team/invites/{invite_id}/withdraw")).headers["location"].endswith("invitation-withdrawn")
    stack.client.cookies.clear()
    assert (await stack.client.get(path)).status_code == 404
    assert "typo@exmaple.com" not in (await admin.get("/dashboard/team")).text

    assert "you</span>" in team and team.count('/remove"') == 1  # no button for oneself, and the form refuses it
    me = await _user_id(stack, admin)
    refused = await admin.post(f"/dashboard/team/{me}/remove")
    assert refused.status_code == 409 and _errors(refused.text) == ["You cannot remove yourself: ask a teammate to."]
    assert (await admin.get("/dashboard/")).status_code == 200


async def test_guessing_the_current_password_is_held_to_the_login_limits(stack_factory: Callable[..., Any]) -> None:
    """A stolen session must not try passwords freely; and the new password is checked first, so an
    attempt with a mismatched confirmation learns nothing about the current one."""
    stack = await stack_factory(dashboard_login_limit="0.001/3")
    tenant = await new_tenant(stack.client)
    await _user(stack.settings, tenant, "pat@example.com")
    browser = Browser(stack.client, (await log_in(stack.client, "pat@example.com")).cookies[SESSION], "")  # one login: 1 of 3
    browser.csrf = csrf_field((await browser.get("/dashboard/account")).text)
    new = "a brand new passphrase"
    differ = await browser.post("/dashboard/account/password", {"current": PASSWORD, "password": new, "confirm": new + "!"})
    assert _errors(differ.text) == ["The two passwords differ."]  # the right current password, but nothing said of it
    guesses = [(await browser.post("/dashboard/account/password", {"current": f"guess {n}", "password": new, "confirm": new})).status_code
               for n in range(3)]
    assert guesses == [400, 400, 429]
    refused = await browser.post("/dashboard/account/password", {"current": PASSWORD, "password": new, "confirm": new})
    assert refused.status_code == 429 and "Too many attempts" in _errors(refused.text)[0]


async def test_changing_the_password_signs_out_the_other_sessions(stack: Stack, signed_in: Callable[..., Any]) -> None:
    tenant, _first = await signed_in("Acme")
    await _user(stack.settings, tenant, "pat@example.com")
    here = Browser(stack.client, (await log_in(stack.client, "pat@example.com")).cookies[SESSION], "")
    elsewhere = Browser(stack.client, (await log_in(stack.client, "pat@example.com")).cookies[SESSION], "")
    here.csrf = csrf_field((await here.get("/dashboard/account")).text)
    new = "a brand new passphrase"

    wrong = await here.post("/dashboard/account/password", {"current": "not it", "password": new, "confirm": new})
    assert wrong.status_code == 400 and _errors(wrong.text) == ["That is not your current password."]
    differ = await here.post("/dashboard/account/password", {"current": PASSWORD, "password": new, "confirm": new + "!"})
    assert differ.status_code == 400 and _errors(differ.text) == ["The two passwords differ."]
    short = await here.post("/dashboard/account/password", {"current": PASSWORD, "password": "short", "confirm": "short"})
    assert short.status_code == 400 and _errors(short.text) == ["Use at least 10 characters."]
    assert (await elsewhere.get("/dashboard/")).status_code == 200  # nothing changed yet

    changed = await here.post("/dashboard/account/password", {"current": PASSWORD, "password": new, "confirm": new})
    assert changed.headers["location"] == "/dashboard/account?done=password-changed"
    assert (await here.get("/dashboard/")).status_code == 200
    assert (await elsewhere.get("/dashboard/")).status_code == 303
    assert (await log_in(stack.client, "pat@example.com")).status_code == 400
    assert (await log_in(stack.client, "pat@example.com", new)).status_code == 303


async def _user_id(stack: Stack, browser: Browser) -> str:
    email = re.search(r'class="who" href="/dashboard/account">([^<]+)<', (await browser.get("/dashboard/")).text).group(1)
    engine = create_engine(stack.settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            return str(await session.scalar(select(User.id).where(User.email == email)))
    finally:
        await engine.dispose()


async def test_lists_page_with_a_cursor_that_keeps_the_filters(stack: Stack, signed_in: Callable[..., Any]) -> None:
    tenant, browser = await signed_in()
    source = await new_source(stack.client, tenant)
    sent = [await stack.ingest(source, stripe_event("customer_updated")) for _ in range(51)]
    first = await browser.get("/dashboard/events", type="customer.updated")
    assert sent[-1] in first.text and sent[0] not in first.text
    older = unescape(re.search(r'href="([^"]+)">Older events', first.text).group(1))
    assert "type=customer.updated" in older and "cursor=" in older
    second = await browser.get(older)
    assert sent[0] in second.text and sent[-1] not in second.text and "Older events" not in second.text


async def test_cli_creates_users(stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = await new_tenant(stack.client)
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("HOOKGATE_SECRET_KEY", stack.settings.secret_key)
    monkeypatch.setenv("HOOKGATE_USER_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    try:
        await asyncio.to_thread(cli, ["users", "create", "--tenant", tenant.id, "--email", "Cli@Example.com"])
        assert "created dashboard user cli@example.com" in capsys.readouterr().out
        assert (await log_in(stack.client, "cli@example.com")).status_code == 303
        with pytest.raises(SystemExit, match="already exists"):
            await asyncio.to_thread(cli, ["users", "create", "--tenant", tenant.id, "--email", "cli@example.com", "--password", PASSWORD])
        monkeypatch.setenv("HOOKGATE_USER_PASSWORD", "short")
        with pytest.raises(SystemExit, match="at least 10 characters"):
            await asyncio.to_thread(cli, ["users", "create", "--tenant", tenant.id, "--email", "other@example.com"])
        with pytest.raises(SystemExit, match="no tenant"):
            await asyncio.to_thread(cli, ["users", "create", "--tenant", str(uuid.uuid4()), "--email", "x@example.com"])

        signed_in = Browser(stack.client, (await log_in(stack.client, "cli@example.com")).cookies[SESSION], "")
        await asyncio.to_thread(cli, ["users", "set-password", "--email", "CLI@example.com", "--password", "reset by the operator"])
        assert "set a new password for dashboard user cli@example.com" in capsys.readouterr().out
        assert (await signed_in.get("/dashboard/")).status_code == 303  # its sessions ended
        assert (await log_in(stack.client, "cli@example.com")).status_code == 400
        assert (await log_in(stack.client, "cli@example.com", "reset by the operator")).status_code == 303
        with pytest.raises(SystemExit, match="at least 10 characters"):
            await asyncio.to_thread(cli, ["users", "set-password", "--email", "cli@example.com", "--password", "short"])

        await asyncio.to_thread(cli, ["users", "delete", "--email", "cli@example.com"])
        assert "deleted dashboard user cli@example.com" in capsys.readouterr().out
        assert (await log_in(stack.client, "cli@example.com", "reset by the operator")).status_code == 400
        with pytest.raises(SystemExit, match="no account for nobody@example.com"):
            await asyncio.to_thread(cli, ["users", "delete", "--email", "nobody@example.com"])
        # the address is free again: its own tenant can have it (what frees one another tenant invited first)
        await asyncio.to_thread(cli, ["users", "create", "--tenant", tenant.id, "--email", "cli@example.com", "--password", PASSWORD])
    finally:
        get_settings.cache_clear()
