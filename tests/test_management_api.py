"""Every management route of the foundation, on Postgres and SQLite, including tenant isolation."""

from __future__ import annotations

import base64

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tenants.secrets import MAX_ACTIVE_SECRETS
from tests.conftest import OPERATOR_KEY, TenantHandle, ingest_path, new_source, new_tenant
from tests.support.stripe_events import signed_stripe, stripe_event

Client = AsyncTestClient[Litestar]
PROBLEM = "application/problem+json"


def _is_problem(response, status: int) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["detail"] and body["type"].startswith("https://")


async def test_create_tenant_needs_the_operator_key(client: Client) -> None:
    _is_problem(await client.post("/api/v1/tenants", json={"name": "x"}), 401)
    _is_problem(await client.post("/api/v1/tenants", json={"name": "x"}, headers={"authorization": "Bearer nope"}), 401)
    response = await client.post("/api/v1/tenants", json={"name": "Acme"}, headers={"authorization": f"Bearer {OPERATOR_KEY}"})
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "Acme" and body["api_key"].startswith("hgk_")
    fetched = await client.get(f"/api/v1/tenants/{body['id']}", headers={"authorization": f"Bearer {OPERATOR_KEY}"})
    assert fetched.status_code == 200 and "api_key" not in fetched.json()


async def test_a_tenant_key_is_not_an_operator_key(client: Client, tenant: TenantHandle) -> None:
    refused = await client.post("/api/v1/tenants", json={"name": "x"}, headers=tenant.auth)
    _is_problem(refused, 401)
    assert refused.headers["www-authenticate"] == "Bearer"  # RFC 9110: a 401 names its scheme


async def test_tenant_routes_need_a_valid_key(client: Client, tenant: TenantHandle) -> None:
    _is_problem(await client.get("/api/v1/sources"), 401)
    _is_problem(await client.get("/api/v1/sources", headers={"authorization": "Bearer hgk_wrong"}), 401)
    _is_problem(await client.get("/api/v1/events", headers={"authorization": "Basic abc"}), 401)
    assert (await client.get("/api/v1/sources", headers=tenant.auth)).status_code == 200


@pytest.mark.parametrize("provider", ["stripe", "standard_webhooks", "github", "shopify", "hmac_sha256"])
async def test_create_source_generates_a_secret(client: Client, tenant: TenantHandle, provider: str) -> None:
    source = await new_source(client, tenant, provider)
    assert source["provider"] == provider
    assert source["ingest_url"].startswith("http://testserver.local/ingest/")
    assert len(source["ingest_url"].rsplit("/", 1)[1]) >= 22  # ≥ 128 bits, url-safe
    assert source["secret"] and len(source["secrets"]) == 1
    if provider in ("stripe", "standard_webhooks"):
        assert source["secret"].startswith("whsec_")


async def test_create_source_with_own_secret_and_bad_input(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant, "stripe", secret="whsec_mine")
    assert source["secret"] == "whsec_mine"
    bad = await client.post("/api/v1/sources", json={"name": "x", "provider": "paypal"}, headers=tenant.auth)
    _is_problem(bad, 400)
    assert bad.json()["errors"][0]["key"] == "provider"
    _is_problem(await client.post("/api/v1/sources", json={"provider": "stripe"}, headers=tenant.auth), 400)
    _is_problem(await client.post("/api/v1/sources", content=b"{not json", headers=tenant.auth), 400)
    _is_problem(
        await client.post("/api/v1/sources", json={"name": "x", "provider": "stripe", "secret": "no-prefix"}, headers=tenant.auth),
        422,
    )


async def test_list_get_patch_delete_sources(client: Client, tenant: TenantHandle) -> None:
    created = [await new_source(client, tenant, "stripe", name=f"s{i}") for i in range(3)]
    first = (await client.get("/api/v1/sources?limit=2", headers=tenant.auth)).json()
    assert [s["name"] for s in first["data"]] == ["s2", "s1"] and first["next_cursor"]
    second = (await client.get(f"/api/v1/sources?limit=2&cursor={first['next_cursor']}", headers=tenant.auth)).json()
    assert [s["name"] for s in second["data"]] == ["s0"] and second["next_cursor"] is None
    assert all("secret" not in s for s in first["data"])
    _is_problem(await client.get("/api/v1/sources?cursor=garbage", headers=tenant.auth), 400)
    _is_problem(await client.get("/api/v1/sources?limit=0", headers=tenant.auth), 400)

    sid = created[0]["id"]
    got = (await client.get(f"/api/v1/sources/{sid}", headers=tenant.auth)).json()
    assert got["name"] == "s0" and got["ingest_url"] == created[0]["ingest_url"]
    patched = await client.patch(
        f"/api/v1/sources/{sid}", json={"name": "renamed", "priorities": {"invoice.*": "critical"}}, headers=tenant.auth
    )
    assert patched.status_code == 200 and patched.json()["name"] == "renamed"
    assert patched.json()["priorities"] == {"invoice.*": "critical"}
    _is_problem(await client.patch(f"/api/v1/sources/{sid}", json={"priorities": {"x": "urgent"}}, headers=tenant.auth), 400)
    for bad in ({"a*b": "critical"}, {"": "low"}, {"x\u0000": "low"}, {f"t{n}.*": "low" for n in range(101)}):
        refused = await client.patch(f"/api/v1/sources/{sid}", json={"priorities": bad}, headers=tenant.auth)
        _is_problem(refused, 422)
        assert refused.json()["type"].endswith("/invalid-priorities"), refused.text
    assert (await client.get(f"/api/v1/sources/{sid}", headers=tenant.auth)).json()["priorities"] == {"invoice.*": "critical"}

    assert (await client.delete(f"/api/v1/sources/{sid}", headers=tenant.auth)).status_code == 204
    _is_problem(await client.get(f"/api/v1/sources/{sid}", headers=tenant.auth), 404)
    body, headers = signed_stripe(stripe_event(), created[0]["secret"])
    _is_problem(await client.post(ingest_path(created[0]), content=body, headers=headers), 404)


async def test_head_answers_as_get_without_the_body(client: Client, tenant: TenantHandle) -> None:
    """RFC 9110: HEAD wherever GET works (monitors and link checkers use it); the rest stay 405."""
    for path, headers in (("/healthz", {}), ("/api/v1/sources", tenant.auth), ("/dashboard/login", {})):
        got, head = await client.get(path, headers=headers), await client.head(path, headers=headers)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
        assert head.headers["content-type"] == got.headers["content-type"]
    assert (await client.head("/api/v1/sources")).status_code == 401  # as the GET would be
    assert (await client.head("/ingest/" + "A" * 32)).status_code == 405  # ingest takes POST only


async def test_a_source_keeps_at_most_five_secrets_active(client: Client, tenant: TenantHandle) -> None:
    """Each active secret is tried on every ingest whose signature fails: a thousand made one bad
    request cost the gateway's event loop over half a second, for every tenant."""
    path = f"/api/v1/sources/{(await new_source(client, tenant))['id']}/secrets"
    keep = {"expire_previous_after_seconds": 3600}
    for _ in range(MAX_ACTIVE_SECRETS - 1):
        assert (await client.post(path, json=keep, headers=tenant.auth)).status_code == 201
    refused = await client.post(path, json=keep, headers=tenant.auth)
    _is_problem(refused, 409)
    assert refused.json()["type"].endswith("/too-many-secrets")
    assert len((await client.get(path, headers=tenant.auth)).json()) == MAX_ACTIVE_SECRETS
    assert (await client.post(path, json={"expire_previous_after_seconds": 0}, headers=tenant.auth)).status_code == 201


async def test_a_missing_body_is_named_as_such(client: Client) -> None:
    response = await client.post("/api/v1/tenants", headers={"authorization": f"Bearer {OPERATOR_KEY}"})
    _is_problem(response, 400)
    assert response.json()["errors"] == [{"message": "this request needs a JSON body", "key": "data", "source": "body"}]


async def test_source_priority_override_applies_at_ingest(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    await client.patch(f"/api/v1/sources/{source['id']}", json={"priorities": {"product.*": "critical"}}, headers=tenant.auth)
    body, headers = signed_stripe(stripe_event("product_created"), source["secret"])
    accepted = (await client.post(ingest_path(source), content=body, headers=headers)).json()
    event = (await client.get(f"/api/v1/events/{accepted['id']}", headers=tenant.auth)).json()
    assert event["priority"] == "critical"


async def test_add_and_reveal_secrets(client: Client, tenant: TenantHandle) -> None:
    source = await new_source(client, tenant)
    added = await client.post(f"/api/v1/sources/{source['id']}/secrets", headers=tenant.auth)  # no body: the defaults
    assert added.status_code == 201 and added.json()["secret"].startswith("whsec_")
    revealed = (await client.get(f"/api/v1/sources/{source['id']}/secrets", headers=tenant.auth)).json()
    assert {s["secret"] for s in revealed} == {source["secret"], added.json()["secret"]}
    old = next(s for s in (await client.get(f"/api/v1/sources/{source['id']}", headers=tenant.auth)).json()["secrets"] if s["id"] != added.json()["id"])
    assert old["expires_at"] is not None  # the previous secret now has a grace period (24 h default)


async def test_events_list_filters_and_detail(client: Client, tenant: TenantHandle) -> None:
    stripe_source = await new_source(client, tenant)
    other_source = await new_source(client, tenant)
    ids = {}
    for name, source in [("charge_succeeded", stripe_source), ("invoice_paid", stripe_source), ("product_created", other_source)]:
        event = stripe_event(name)
        body, headers = signed_stripe(event, source["secret"])
        response = await client.post(ingest_path(source), content=body, headers=headers)
        assert response.status_code == 200, response.text
        ids[name] = (response.json()["id"], body)

    listed = (await client.get("/api/v1/events", headers=tenant.auth)).json()["data"]
    assert [e["type"] for e in listed] == ["product.created", "invoice.paid", "charge.succeeded"]
    by_type = (await client.get("/api/v1/events?type=invoice.paid", headers=tenant.auth)).json()["data"]
    assert [e["id"] for e in by_type] == [ids["invoice_paid"][0]]
    by_source = (await client.get(f"/api/v1/events?source_id={other_source['id']}", headers=tenant.auth)).json()["data"]
    assert [e["type"] for e in by_source] == ["product.created"]
    assert (await client.get("/api/v1/events?since=2999-01-01T00:00:00Z", headers=tenant.auth)).json()["data"] == []
    assert len((await client.get("/api/v1/events?until=2999-01-01T00:00:00Z", headers=tenant.auth)).json()["data"]) == 3
    # Offsets that take a bound past year 1 or 9999 in UTC are those ends of time, not a 500.
    for query in ("since=0001-01-01T00:00:00%2B14:00", "until=9999-12-31T23:59:59-14:00"):
        for path in ("events", "deliveries", "anomalies"):
            bounded = await client.get(f"/api/v1/{path}?{query}", headers=tenant.auth)
            assert bounded.status_code == 200, (path, query, bounded.text)
        assert len((await client.get(f"/api/v1/events?{query}", headers=tenant.auth)).json()["data"]) == 3
    far = base64.urlsafe_b64encode(b"0001-01-01T00:00:00+14:00|00000000-0000-0000-0000-000000000000").decode()
    assert (await client.get(f"/api/v1/events?cursor={far}", headers=tenant.auth)).status_code == 200
    paged = (await client.get("/api/v1/events?limit=1", headers=tenant.auth)).json()
    rest = (await client.get(f"/api/v1/events?limit=5&cursor={paged['next_cursor']}", headers=tenant.auth)).json()
    assert [e["type"] for e in paged["data"] + rest["data"]] == [e["type"] for e in listed]

    event_id, body = ids["charge_succeeded"]
    detail = await client.get(f"/api/v1/events/{event_id}", headers=tenant.auth)
    assert detail.status_code == 200
    assert detail.json()["priority"] == "critical" and detail.json()["deliveries"] == []
    raw_payload = detail.content.split(b'"payload":', 1)[1]
    assert raw_payload.startswith(body)  # the stored bytes, exactly as received


async def test_openapi_lists_every_route_with_an_operation_id(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert len(operations) >= 10
    assert all(op.get("operationId") for op in operations)
    assert "/ingest/{token}" in schema["paths"]


async def test_unknown_routes_and_ids_answer_problem_404(client: Client, tenant: TenantHandle) -> None:
    _is_problem(await client.get("/api/v1/nothing-here", headers=tenant.auth), 404)
    _is_problem(await client.get("/api/v1/sources/00000000-0000-0000-0000-000000000000", headers=tenant.auth), 404)


async def test_tenant_isolation(client: Client) -> None:
    alice, bob = await new_tenant(client, "Alice"), await new_tenant(client, "Bob")
    source = await new_source(client, alice)
    body, headers = signed_stripe(stripe_event(), source["secret"])
    event_id = (await client.post(ingest_path(source), content=body, headers=headers)).json()["id"]
    sid = source["id"]

    for method, path, payload in [
        ("GET", f"/api/v1/sources/{sid}", None),
        ("PATCH", f"/api/v1/sources/{sid}", {"name": "stolen"}),
        ("DELETE", f"/api/v1/sources/{sid}", None),
        ("POST", f"/api/v1/sources/{sid}/secrets", {}),
        ("GET", f"/api/v1/sources/{sid}/secrets", None),
        ("GET", f"/api/v1/events/{event_id}", None),
    ]:
        response = await client.request(method, path, json=payload, headers=bob.auth)
        _is_problem(response, 404)
    assert (await client.get("/api/v1/sources", headers=bob.auth)).json()["data"] == []
    assert (await client.get("/api/v1/events", headers=bob.auth)).json()["data"] == []
    assert (await client.get(f"/api/v1/events?source_id={sid}", headers=bob.auth)).json()["data"] == []
    # nothing changed for Alice
    still = (await client.get(f"/api/v1/sources/{sid}", headers=alice.auth)).json()
    assert still["name"] == source["name"] and len(still["secrets"]) == 1


async def test_a_query_parameter_the_route_does_not_declare_is_a_400(client: Client, tenant: TenantHandle) -> None:
    """A typo (`stauts`) or a filter another list has (`status` on events) would otherwise list
    everything, unfiltered, with no sign that the filter was not applied."""
    source = await new_source(client, tenant)
    for path, typo in [("/api/v1/deliveries", "stauts=dead"), ("/api/v1/events", "status=dead"), ("/api/v1/endpoints", "lmit=1"),
                       (f"/api/v1/sources/{source['id']}", "expand=secrets")]:
        refused = await client.get(f"{path}?{typo}", headers=tenant.auth)
        assert refused.status_code == 400, (path, refused.text)
        problem = refused.json()
        assert problem["type"].endswith("/unknown-parameter") and problem["parameters"] == [typo.split("=")[0]]
    listed = await client.get("/api/v1/deliveries?status=dead&limit=5", headers=tenant.auth)  # what it declares still works
    assert listed.status_code == 200
    assert (await client.head("/api/v1/events?limit=1", headers=tenant.auth)).status_code == 200
    assert (await client.options("/api/v1/events?limit=1")).status_code == 204  # Litestar's own OPTIONS: not held to the document
