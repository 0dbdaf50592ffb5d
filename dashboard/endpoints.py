"""Endpoints: create, edit, enable/disable, delete, rotate or reveal the signing secret, send a
test event; the detail shows the breaker and recent attempts. All through EndpointService."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import Provide
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.sessions import Viewer
from dashboard.web import PREFIX, field, field_errors, form, grace_choice, page, see_other, see_other_showing, shown_once
from delivery.breaker import Breaker
from delivery.operational import send_test_and_ring
from gateway.doorbell import Doorbell
from gateway.events.models import Attempt, Delivery, Event
from gateway.problems import Problem
from gateway.settings import Settings
from tenants.crypto import SecretBox
from tenants.endpoints.models import Endpoint
from tenants.endpoints.schemas import EndpointCreate, EndpointUpdate, SecretRotate
from tenants.endpoints.service import EndpointService

_FIELDS = {
    "$.url": "url", "unsafe-url": "url", "$.description": "description", "$.event_types": "event_types",
    "invalid-event-types": "event_types", "$.rate_limit_per_second": "rate_limit_per_second",
}
_PLAIN = {
    "url": "Enter the full URL of your server, like https://example.com/webhooks.",
    "rate_limit_per_second": "Enter deliveries per second as a number above 0 (at most 10000), or leave it blank for no limit.",
    "description": "Keep the description under 1000 characters.",
}
RECENT = 20


def _service(db_session: AsyncSession, viewer: Viewer, secret_box: SecretBox, settings: Settings, breaker: Breaker) -> EndpointService:
    return EndpointService(db_session, viewer.tenant_id, secret_box, settings, breaker)


def _values(data: Any) -> dict[str, Any]:
    """The form as the API's JSON shape: event types one per line or comma-separated (none is an
    error, not "every type": emptying the field must not subscribe the endpoint to everything),
    blank rate = none."""
    types = [t.strip() for t in field(data, "event_types").replace(",", "\n").splitlines() if t.strip()]
    rate = field(data, "rate_limit_per_second")
    return {
        "url": field(data, "url"),
        "description": field(data, "description"),
        "event_types": types,
        "rate_limit_per_second": rate or None,
    }


def _converted(values: dict[str, Any], shape: type[Any]) -> Any:
    return msgspec.convert(values, shape, strict=False)


class EndpointPages(Controller):
    path = "/endpoints"
    dependencies = {"service": Provide(_service, sync_to_thread=False)}

    @get(operation_id="dashboardEndpoints", include_in_schema=False)
    async def endpoints(self, request: Request[Any, Any, Any], service: EndpointService) -> Any:
        rows = await service.repo.fetch(service.repo.scoped().order_by(Endpoint.created_at.desc()))
        return page(request, "endpoints.html", endpoints=[await service.shape(row) for row in rows])

    @get("/new", operation_id="dashboardNewEndpoint", include_in_schema=False)
    async def new(self, request: Request[Any, Any, Any]) -> Any:
        return page(request, "endpoint_form.html", values={"event_types": ["*"]}, errors={}, endpoint=None)

    @post(operation_id="dashboardCreateEndpoint", include_in_schema=False)
    async def create(self, request: Request[Any, Any, Any], service: EndpointService) -> Any:
        values = _values(await form(request))
        try:
            endpoint, secret = await service.create(_converted(values, EndpointCreate))
        except (msgspec.ValidationError, Problem) as exc:
            return page(request, "endpoint_form.html", 400, values=values, errors=field_errors(exc, _FIELDS, _PLAIN), endpoint=None)
        return see_other_showing(request, service.box, f"{PREFIX}/endpoints/{endpoint.id}", "endpoint-created", secrets=[secret])

    async def _detail(self, request: Request[Any, Any, Any], service: EndpointService, endpoint_id: uuid.UUID,
                      status_code: int = 200, **context: Any) -> Any:
        endpoint = await service.repo.get(endpoint_id)
        attempts = (await service.session.execute(
            select(Attempt, Delivery, Event.type)
            .join(Delivery, Delivery.id == Attempt.delivery_id)
            .join(Event, Event.id == Delivery.event_id)
            .where(Delivery.endpoint_id == endpoint.id, Delivery.tenant_id == service.tenant_id)
            .order_by(Attempt.started_at.desc())
            .limit(RECENT)
        )).all()
        values = {**msgspec.structs.asdict(await service.shape(endpoint)), **context.pop("values", {})}
        return page(request, "endpoint.html", status_code, endpoint=await service.shape(endpoint), attempts=attempts,
                    values=values, errors=context.pop("errors", {}), **context)

    @get("/{endpoint_id:uuid}", operation_id="dashboardEndpoint", include_in_schema=False)
    async def endpoint(self, request: Request[Any, Any, Any], service: EndpointService, endpoint_id: uuid.UUID) -> Any:
        return await self._detail(request, service, endpoint_id, secrets=shown_once(request, service.box).get("secrets"))

    @post("/{endpoint_id:uuid}", operation_id="dashboardUpdateEndpoint", include_in_schema=False)
    async def update(self, request: Request[Any, Any, Any], service: EndpointService, endpoint_id: uuid.UUID) -> Any:
        values = _values(await form(request))
        try:
            await service.update(endpoint_id, _converted(values, EndpointUpdate))
        except (msgspec.ValidationError, Problem) as exc:
            if isinstance(exc, Problem) and exc.status_code == 404:
                raise
            await service.session.rollback()
            return await self._detail(request, service, endpoint_id, 400, values=values, errors=field_errors(exc, _FIELDS, _PLAIN))
        return see_other(f"{PREFIX}/endpoints/{endpoint_id}", "endpoint-saved")

    @post("/{endpoint_id:uuid}/enabled", operation_id="dashboardEnableEndpoint", include_in_schema=False)
    async def set_enabled(self, request: Request[Any, Any, Any], service: EndpointService, endpoint_id: uuid.UUID) -> Any:
        enabled = field(await form(request), "enabled") == "true"
        await service.update(endpoint_id, EndpointUpdate(enabled=enabled))
        return see_other(f"{PREFIX}/endpoints/{endpoint_id}", "endpoint-enabled" if enabled else "endpoint-disabled")

    @post("/{endpoint_id:uuid}/delete", operation_id="dashboardDeleteEndpoint", include_in_schema=False)
    async def delete(self, service: EndpointService, endpoint_id: uuid.UUID) -> Any:
        await service.delete(endpoint_id)
        return see_other(f"{PREFIX}/endpoints", "endpoint-deleted")

    @post("/{endpoint_id:uuid}/rotate", operation_id="dashboardRotateEndpointSecret", include_in_schema=False)
    async def rotate(self, request: Request[Any, Any, Any], service: EndpointService, endpoint_id: uuid.UUID) -> Any:
        grace = grace_choice(await form(request))
        try:
            added = await service.rotate_secret(endpoint_id, SecretRotate(grace_seconds=grace))
        except Problem as exc:
            return await self._detail(request, service, endpoint_id, 409, secret_error=str(exc.detail))
        done = "endpoint-rotated-now" if grace == 0 else "endpoint-rotated"
        return see_other_showing(request, service.box, f"{PREFIX}/endpoints/{endpoint_id}", done, secrets=[added.secret])

    @post("/{endpoint_id:uuid}/reveal", operation_id="dashboardRevealEndpointSecret", include_in_schema=False)
    async def reveal(self, request: Request[Any, Any, Any], service: EndpointService, endpoint_id: uuid.UUID) -> Any:
        secrets = [secret.secret for secret in await service.reveal(endpoint_id)]
        return await self._detail(request, service, endpoint_id, secrets=secrets)

    @post("/{endpoint_id:uuid}/test", operation_id="dashboardTestEndpoint", include_in_schema=False)
    async def test(self, service: EndpointService, endpoint_id: uuid.UUID, doorbell: Doorbell) -> Any:
        await send_test_and_ring(service.session, service.tenant_id, endpoint_id, doorbell)
        return see_other(f"{PREFIX}/endpoints/{endpoint_id}", "test-sent")
