"""Sources: the ingest URL to paste into the provider, its signing secret (reveal, rotate) and a
setup hint per provider. Everything goes through tenants.sources.service."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.sessions import Viewer
from dashboard.web import PREFIX, field, field_errors, form, grace_choice, page, see_other_showing, shown_once
from gateway.database import utcnow
from gateway.problems import Problem
from gateway.settings import Settings
from tenants.crypto import SecretBox
from tenants.secrets import active_rows
from tenants.sources.directory import SourceDirectory
from tenants.sources.models import Source
from tenants.sources.schemas import SecretCreate, SourceCreate
from tenants.sources.service import SourceService

PROVIDERS = {
    "stripe": (
        "Stripe",
        "In the Stripe Dashboard open Developers → Webhooks → Add endpoint, paste the ingest URL, pick "
        "the events to send, then paste Stripe's signing secret (whsec_…) here with Rotate → Use my own "
        "secret, or copy this source's secret into Stripe's CLI (stripe listen --forward-to).",
    ),
    "standard_webhooks": (
        "Standard Webhooks",
        "Configure the sender to POST to the ingest URL and sign with this source's whsec_ secret "
        "(webhook-id, webhook-timestamp and webhook-signature headers).",
    ),
    "github": (
        "GitHub",
        "In the repository or organisation open Settings → Webhooks → Add webhook, paste the ingest URL, "
        "choose content type application/json and paste this source's secret as the Secret.",
    ),
    "shopify": (
        "Shopify",
        "In the Shopify admin open Settings → Notifications → Webhooks → Create webhook, format JSON, "
        "paste the ingest URL; then paste the app's signing secret here (Rotate → Use my own secret).",
    ),
    "hmac_sha256": (
        "Generic HMAC-SHA256",
        "Have the sender POST JSON to the ingest URL with an X-Webhook-Signature header: the hex (or base64) "
        "HMAC-SHA256 of the raw body under this source's secret.",
    ),
}


def _service(
    db_session: AsyncSession, viewer: Viewer, secret_box: SecretBox, settings: Settings, source_directory: SourceDirectory
) -> SourceService:
    return SourceService(db_session, viewer.tenant_id, secret_box, settings, source_directory)


class SourcePages(Controller):
    path = "/sources"
    dependencies = {"service": Provide(_service, sync_to_thread=False)}

    async def _list(self, request: Request[Any, Any, Any], service: SourceService, status_code: int = 200, **context: Any) -> Any:
        rows = await service.repo.fetch(service.repo.scoped().order_by(Source.created_at.desc()))
        return page(
            request, "sources.html", status_code=status_code, sources=[service.shape(row) for row in rows],
            providers=PROVIDERS, **context,
        )

    @get(operation_id="dashboardSources", include_in_schema=False)
    async def sources(self, request: Request[Any, Any, Any], service: SourceService) -> Any:
        return await self._list(request, service, values={}, errors={})

    @post(operation_id="dashboardCreateSource", include_in_schema=False)
    async def create(self, request: Request[Any, Any, Any], service: SourceService) -> Any:
        data = await form(request)
        values = {"name": field(data, "name"), "provider": field(data, "provider")}
        try:
            source, secret = await service.create(msgspec.convert(values, SourceCreate))
        except (msgspec.ValidationError, Problem) as exc:
            errors = field_errors(exc, {"$.name": "name", "$.provider": "provider"},
                                  {"name": "Give the source a name (up to 200 characters).", "provider": "Choose a provider from the list."})
            return await self._list(request, service, 400, values=values, errors=errors)
        return see_other_showing(request, service.box, f"{PREFIX}/sources/{source.id}", "source-created", secrets=[secret])

    async def _detail(self, request: Request[Any, Any, Any], service: SourceService, source_id: uuid.UUID,
                      status_code: int = 200, **context: Any) -> Any:
        """The source's page; ``active`` lists the secrets that verify now (expired ones are kept, not shown)."""
        source = await service.repo.get(source_id)
        return page(request, "source.html", status_code, source=service.shape(source), hint=PROVIDERS[source.provider],
                    active=active_rows(source.secrets, utcnow()), **context)

    @get("/{source_id:uuid}", operation_id="dashboardSource", include_in_schema=False)
    async def source(self, request: Request[Any, Any, Any], service: SourceService, source_id: uuid.UUID) -> Any:
        return await self._detail(request, service, source_id, secrets=shown_once(request, service.box).get("secrets"))

    @post("/{source_id:uuid}/reveal", operation_id="dashboardRevealSourceSecret", include_in_schema=False)
    async def reveal(self, request: Request[Any, Any, Any], service: SourceService, source_id: uuid.UUID) -> Any:
        """A POST (with the CSRF token), so a secret is never in a URL, a history entry or a cache."""
        secrets = [secret.secret for secret in await service.reveal(source_id)]
        return await self._detail(request, service, source_id, secrets=secrets)

    @post("/{source_id:uuid}/rotate", operation_id="dashboardRotateSourceSecret", include_in_schema=False)
    async def rotate(self, request: Request[Any, Any, Any], service: SourceService, source_id: uuid.UUID) -> Any:
        data = await form(request)
        own, grace = field(data, "secret") or None, grace_choice(data)
        try:
            added = await service.add_secret(source_id, SecretCreate(secret=own, expire_previous_after_seconds=grace))
        except Problem as exc:
            return await self._detail(request, service, source_id, 400, secrets=None, own=own or "",
                                      errors=field_errors(exc, {"invalid-secret": "secret"}))
        done = "source-rotated-now" if grace == 0 else "source-rotated"
        return see_other_showing(request, service.box, f"{PREFIX}/sources/{source_id}", done, secrets=[added.secret])
