"""Tenant isolation, generated from the app's own route table.

Every route with a path parameter is called with another tenant's API key on the first tenant's
resource: the answer must be a 404 problem and the database must not change. The first tenant's
own call must then find the resource (not 404), so the request was a real one. The routes are
enumerated, not listed: a route added later is in the matrix at once, and one whose parameter the
matrix cannot fill fails here until it gets a resource below or a reviewed entry in ``EXCLUDED``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from sqlalchemy import select, text, update

from dashboard.accounts import create_user, invite
from dashboard.models import Invite
from gateway.database import Base, create_engine, session_factory, utcnow
from gateway.events.models import DEAD, Delivery
from gateway.settings import Settings
from ml.online.models import Anomaly
from tenants.service import ApiKeyRepository
from tests.conftest import OPERATOR_KEY, Stack, TenantHandle, new_source, new_tenant
from tests.support.dashboard import Browser, browser_for

# Reviewed exclusions: (path prefix) -> why another tenant's API key does not apply there.
EXCLUDED = {
    "/api/v1/tenants/": "operator-only: the operator key provisions every tenant by design; a tenant key gets 401 "
    "(asserted in test_operator_routes_refuse_tenant_keys)",
    "/ingest/": "the path token is the credential (providers send no API key); unknown tokens answer 404 "
    "(tests/test_management_api.py)",
    "/schema/": "static OpenAPI documents, no tenant data",
    "/dashboard/": "session cookies, not API keys, reach it (an API key is redirected to the login page); "
    "the dashboard matrix below calls every one of its id routes with another tenant's session",
}

# The dashboard matrix's reviewed exclusions, as above.
DASHBOARD_EXCLUDED = {
    "/dashboard/invite/": "the path token is the invitation's credential (whoever holds it may join); unknown and used "
    "tokens answer 404 (tests/test_dashboard.py test_a_teammate_joins_through_an_invitation)",
    "/dashboard/static/": "the dashboard's own script and stylesheet, no tenant data",
}
# Dashboard forms without a path id, reviewed: the resource ids each names in its body, or none
# (it creates for the signed-in tenant, or acts on the session itself).
DASHBOARD_FORM_IDS: dict[str, dict[str, str]] = {
    "dashboardPurge": {"delivery_id": "delivery_id"},
    "dashboardRedrive": {"delivery_id": "delivery_id", "scope": "selected"},
    "dashboardLogin": {}, "dashboardLogout": {}, "dashboardCreateSource": {}, "dashboardCreateEndpoint": {},
    "dashboardCreateApiKey": {}, "dashboardInvite": {}, "dashboardChangePassword": {},
}

# Request bodies that are valid for the owner, by operation id (default: no body).
BODIES: dict[str, dict[str, Any]] = {
    "addSourceSecret": {"secret": "whsec_isolationmatrixsecret"},
    "updateSource": {"name": "stolen"},
    "updateEndpoint": {"enabled": False},
    "rotateEndpointSecret": {},
    "replayEvent": {},
    "backfillSource": {"since": (utcnow() - timedelta(hours=1)).isoformat()},
}


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def stack(client: AsyncTestClient[Litestar], settings: Settings) -> Stack:
    """The app alone, without a worker: nothing changes the database between two snapshots."""
    return Stack(client, settings)


@dataclass(frozen=True)
class Call:
    method: str
    template: str
    operation_id: str
    parameters: tuple[str, ...]


def tenant_routes(app: Litestar, within: str = "/", excluded: dict[str, str] = EXCLUDED) -> Iterator[Call]:
    """Every (method, path) of the app under ``within`` that takes a path parameter and is not excluded."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path_parameters or not route.path.startswith(within):
            continue
        if any(route.path.startswith(prefix) for prefix in excluded):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                parameters = tuple(route.path_parameters)
                yield Call(method, route.path, handler.operation_id or handler.handler_name, parameters)


def _path(call: Call, ids: dict[str, str]) -> str:
    path = call.template
    for name in call.parameters:
        path = path.replace(f"{{{name}:uuid}}", ids[name])
    assert "{" not in path, f"{call.template}: a parameter type the matrix does not fill"
    return path


async def _world(stack: Stack, alice: TenantHandle) -> dict[str, str]:
    """One resource of each kind for ``alice``, by the path parameter that names it."""
    client = stack.client
    source = await new_source(client, alice)
    patched = await client.patch(f"/api/v1/sources/{source['id']}", json={"stripe_api_key": "rk_test_isolation"}, headers=alice.auth)
    assert patched.status_code == 200, patched.text
    endpoint = await stack.endpoint(alice, "http://127.0.0.1:9/hook")
    event_id = await stack.ingest(source)
    replayed = await client.post(f"/api/v1/events/{event_id}/replay", json={}, headers=alice.auth)
    assert replayed.status_code == 202, replayed.text
    since = (utcnow() - timedelta(hours=1)).isoformat()
    job = await client.post("/api/v1/replays", json={"since": since}, headers=alice.auth)
    assert job.status_code == 202, job.text
    [delivery] = await stack.deliveries(alice, event_id=event_id, endpoint_id=endpoint["id"])
    anomaly = await _worker_rows(stack.settings.database_url, uuid.UUID(alice.id), job.json()["id"], delivery["id"])
    return {
        "source_id": source["id"],
        "endpoint_id": endpoint["id"],
        "event_id": event_id,
        "delivery_id": delivery["id"],
        "job_id": job.json()["id"],
        "anomaly_id": str(anomaly),
    }


async def _worker_rows(database_url: str, tenant_id: uuid.UUID, job_id: str, delivery_id: str) -> uuid.UUID:
    """What a worker would have added (none runs here): an open incident, and the replay job's
    first delivery (the replayed one)."""
    engine = create_engine(database_url, pool_size=1)
    now, anomaly_id = utcnow(), uuid.uuid4()
    row = {"id": anomaly_id, "tenant_id": tenant_id, "kind": "card_testing", "detector": "card_testing", "severity": "high",
           "score": 1.0, "explanation": ["test"], "features": {}, "started_at": now, "last_seen_at": now,
           "windows": 1, "ended_at": now, "created_at": now, "updated_at": now}  # closed: one world per call may add more
    try:
        async with engine.begin() as connection:
            await connection.execute(Anomaly.__table__.insert(), row)
            await connection.execute(
                update(Delivery).where(Delivery.id == uuid.UUID(delivery_id)).values(replay_job_id=uuid.UUID(job_id))
            )
    finally:
        await engine.dispose()
    return anomaly_id


async def _snapshot(database_url: str) -> dict[str, list[str]]:
    """Every row of every table, as sorted text: any write shows up as a difference."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return {
                table.name: sorted(map(repr, await connection.execute(text(f"SELECT * FROM {table.name}"))))
                for table in Base.metadata.sorted_tables
            }
    finally:
        await engine.dispose()


async def test_another_tenants_key_gets_404_and_changes_nothing_on_every_id_route(stack: Stack) -> None:
    client = stack.client
    alice, mallory = await new_tenant(client, "Alice"), await new_tenant(client, "Mallory")
    ids = await _world(stack, alice)
    calls = list(tenant_routes(client.app))
    unbuildable = [f"{c.method} {c.template}" for c in calls if set(c.parameters) - set(ids)]
    assert not unbuildable, f"the matrix cannot build these requests; add a resource to _world or a reviewed EXCLUDED entry: {unbuildable}"
    assert len(calls) >= 20  # the route table really was enumerated

    failures = []
    for call in calls:
        path = _path(call, ids)
        before = await _snapshot(stack.settings.database_url)
        response = await client.request(call.method, path, json=BODIES.get(call.operation_id), headers=mallory.auth)
        after = await _snapshot(stack.settings.database_url)
        if response.status_code != 404 or not response.headers["content-type"].startswith("application/problem+json"):
            failures.append(f"{call.method} {call.template}: {response.status_code} {response.text[:200]}")
        changed = [table for table in before if before[table] != after[table]]
        if changed:
            failures.append(f"{call.method} {call.template} by another tenant changed {changed}")
    # The owner's calls find every resource: the requests above were real ones. A call that removes
    # things (a delete, a cancel that withdraws deliveries) gets a world of its own.
    for call in calls:
        owned = await _world(stack, alice) if call.method == "DELETE" or call.operation_id == "cancelReplay" else ids
        response = await client.request(call.method, _path(call, owned), json=BODIES.get(call.operation_id), headers=alice.auth)
        if response.status_code == 404 or response.status_code >= 500:
            failures.append(f"owner's {call.method} {call.template}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)


# Ids inside queries and bodies name the same resources as the path parameters above.
_FIELD_RESOURCE = {"endpoint_id": "endpoint_id", "endpoint_ids": "endpoint_id", "source_id": "source_id", "delivery_ids": "delivery_id",
                   "event_id": "event_id", "replay_job_id": "job_id"}
_BASE_BODIES = {"createReplay": {"since": (utcnow() - timedelta(hours=1)).isoformat()}}


def _uuid_fields(app: Litestar) -> Iterator[tuple[str, str, str, str, str]]:
    """(method, path, operation id, "query" | "body", field) for every id a request carries outside its path."""
    document = app.openapi_schema.to_schema()
    components = document["components"]["schemas"]

    def properties(schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            return properties(components[schema["$ref"].rsplit("/", 1)[1]])
        found = dict(schema.get("properties", {}))
        for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
            found.update(properties(alternative))
        return found

    def is_id(schema: dict[str, Any]) -> bool:
        if schema.get("format") == "uuid":
            return True
        return ("items" in schema and is_id(schema["items"])) or any(is_id(a) for a in schema.get("oneOf", []) + schema.get("anyOf", []))

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and is_id(parameter.get("schema", {})):
                    yield method.upper(), path, operation["operationId"], "query", parameter["name"]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            for name, schema in properties(body or {}).items():
                if is_id(schema):
                    yield method.upper(), path, operation["operationId"], "body", name


async def test_another_tenants_ids_in_queries_and_bodies_find_nothing(stack: Stack) -> None:
    """Lists filtered by another tenant's id are empty; actions naming one answer 404 and change nothing."""
    client = stack.client
    alice, mallory = await new_tenant(client, "Alice"), await new_tenant(client, "Mallory")
    ids = await _world(stack, alice)
    own = {"event_id": await stack.ingest(await new_source(client, mallory))}  # Mallory's own, for paths
    fields = list(_uuid_fields(client.app))
    assert len(fields) >= 5 and not [f for f in fields if f[4] not in _FIELD_RESOURCE], f"map these ids: {fields}"
    failures = []
    for method, template, operation_id, place, name in fields:
        path = template.format(**own)
        value = ids[_FIELD_RESOURCE[name]]
        query = {name: value} if place == "query" else None
        body = {**_BASE_BODIES.get(operation_id, {}), name: [value] if name.endswith("_ids") else value} if place == "body" else None
        before = await _snapshot(stack.settings.database_url)
        response = await client.request(method, path, params=query, json=body, headers=mallory.auth)
        changed = [t for t, rows in (await _snapshot(stack.settings.database_url)).items() if rows != before[t]]
        if method == "GET":
            ok = response.status_code == 200 and response.json()["data"] == []
        else:
            ok = response.status_code == 404 and response.headers["content-type"].startswith("application/problem+json")
        if not ok or changed:
            failures.append(f"{method} {template} with another tenant's {name}: {response.status_code} {response.text[:160]} changed={changed}")
        if method == "GET":  # the control: the owner's filter finds its rows
            mine = await client.request(method, path, params=query, headers=alice.auth)
            if not mine.json()["data"]:
                failures.append(f"owner's {method} {template}?{name}= found nothing: the check above proved nothing")
    assert not failures, "\n".join(failures)


async def test_operator_routes_refuse_tenant_keys(stack: Stack) -> None:
    alice, mallory = await new_tenant(stack.client, "Alice"), await new_tenant(stack.client, "Mallory")
    for method, body in (("GET", None), ("PATCH", {"delivery_concurrency": 1})):
        response = await stack.client.request(method, f"/api/v1/tenants/{alice.id}", json=body, headers=mallory.auth)
        assert response.status_code == 401, response.text
    answer = await stack.client.get(f"/api/v1/tenants/{alice.id}", headers={"authorization": f"Bearer {OPERATOR_KEY}"})
    assert answer.status_code == 200


def test_every_exclusion_still_names_a_route(app: Litestar) -> None:
    """A stale exclusion would silently cover a future route with the same prefix."""
    paths = [route.path for route in app.routes]
    assert all(any(path.startswith(prefix) for path in paths) for prefix in [*EXCLUDED, *DASHBOARD_EXCLUDED])


async def _dashboard_world(stack: Stack, alice: TenantHandle) -> dict[str, str]:
    """``_world`` plus what only the dashboard names: an API key (a second one, so revoking it
    leaves Alice her own), a dead letter, a teammate and a pending invitation."""
    ids = await _world(stack, alice)
    engine = create_engine(stack.settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            key, _plaintext = await ApiKeyRepository(session, uuid.UUID(alice.id)).create("isolation")
            ids["key_id"] = str(key.id)
            teammate = await create_user(session, uuid.UUID(alice.id), f"mate-{uuid.uuid4().hex[:8]}@example.com", "a long password")
            ids["user_id"] = str(teammate.id)
            await invite(session, uuid.UUID(alice.id), f"new-{uuid.uuid4().hex[:8]}@example.com", teammate.id, 1)
            ids["invite_id"] = str(await session.scalar(select(Invite.id).where(Invite.invited_by == teammate.id)))
            await session.execute(
                update(Delivery).where(Delivery.id == uuid.UUID(ids["delivery_id"])).values(status=DEAD, completed_at=utcnow())
            )
            await session.commit()
    finally:
        await engine.dispose()
    return ids


async def _dashboard_call(browser: Browser, method: str, path: str, data: dict[str, str] | None = None) -> Any:
    return await (browser.get(path) if method == "GET" else browser.post(path, data or {}))


async def test_another_tenants_session_gets_404_and_changes_nothing_on_every_dashboard_id_route(stack: Stack) -> None:
    """The dashboard's half of the matrix: every page and form with an id in its path, then every
    form that carries one in its body, with another tenant's signed-in session."""
    client, database_url = stack.client, stack.settings.database_url
    alice, mallory = await new_tenant(client, "Alice"), await new_tenant(client, "Mallory")
    ids = await _dashboard_world(stack, alice)
    alice_browser = await browser_for(client, database_url, alice.id, "Alice")
    mallory_browser = await browser_for(client, database_url, mallory.id, "Mallory")
    calls = list(tenant_routes(client.app, "/dashboard/", DASHBOARD_EXCLUDED))
    unbuildable = [f"{c.method} {c.template}" for c in calls if set(c.parameters) - set(ids)]
    assert not unbuildable, f"add a resource to _dashboard_world or a reviewed DASHBOARD_EXCLUDED entry: {unbuildable}"
    forms = [
        (handler.operation_id, route.path)
        for route in client.app.routes
        if isinstance(route, HTTPRoute) and route.path.startswith("/dashboard") and not route.path_parameters
        for handler in route.route_handlers
        if "POST" in handler.http_methods
    ]
    unreviewed = [f"{operation_id} {path}" for operation_id, path in forms if operation_id not in DASHBOARD_FORM_IDS]
    assert not unreviewed, f"review these forms' body ids into DASHBOARD_FORM_IDS: {unreviewed}"
    body_calls = [(operation_id, path, fields) for operation_id, path in forms if (fields := DASHBOARD_FORM_IDS[operation_id])]
    assert len(calls) >= 15 and len(body_calls) >= 2  # the route table really was enumerated

    def attempts(world: dict[str, str]) -> list[tuple[str, str, dict[str, str] | None]]:
        return [(c.method, _path(c, world), None) for c in calls] + [
            ("POST", path, {name: world.get(resource, resource) for name, resource in fields.items()}) for _op, path, fields in body_calls
        ]

    failures = []
    for method, path, data in attempts(ids):
        before = await _snapshot(database_url)
        response = await _dashboard_call(mallory_browser, method, path, data)
        changed = [table for table, rows in (await _snapshot(database_url)).items() if rows != before[table]]
        if response.status_code != 404 or "There is nothing here" not in response.text:
            failures.append(f"{method} {path}: {response.status_code} {response.text[:160]}")
        if changed:
            failures.append(f"{method} {path} by another tenant's user changed {changed}")
    # The owner's calls find every resource; one that removes things gets a world of its own.
    for index, (method, path, data) in enumerate(attempts(ids)):
        if path.endswith(("/delete", "/purge", "/remove", "/withdraw")):
            method, path, data = attempts(await _dashboard_world(stack, alice))[index]
        response = await _dashboard_call(alice_browser, method, path, data)
        if response.status_code == 404 or response.status_code >= 500:
            failures.append(f"owner's {method} {path}: {response.status_code} {response.text[:160]}")
    assert not failures, "\n".join(failures)
