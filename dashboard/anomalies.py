"""Anomalies (list, explanation, acknowledge) and API keys (create, shown once; revoke)."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.sessions import Viewer
from dashboard.web import PREFIX, field, form, page, see_other, see_other_showing, shown_once
from gateway.pagination import page_of, paginate
from ml.online.controller import AnomalyRepository
from ml.online.models import Anomaly
from ml.online.schemas import AnomalyOut
from tenants.crypto import SecretBox
from tenants.models import ApiKey
from tenants.service import ApiKeyRepository

PAGE_SIZE = 50


class AnomalyPages(Controller):
    path = "/anomalies"

    @get(operation_id="dashboardAnomalies", include_in_schema=False)
    async def anomalies(self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, cursor: str | None = None) -> Any:
        repo = AnomalyRepository(db_session, viewer.tenant_id)
        rows = await repo.fetch(paginate(repo.scoped(), Anomaly.started_at, Anomaly.id, cursor, PAGE_SIZE))
        result = page_of(rows, PAGE_SIZE, "started_at", AnomalyOut.of)
        return page(request, "anomalies.html", anomalies=result.data, next_cursor=result.next_cursor)

    @get("/{anomaly_id:uuid}", operation_id="dashboardAnomaly", include_in_schema=False)
    async def anomaly(self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, anomaly_id: uuid.UUID) -> Any:
        found = await AnomalyRepository(db_session, viewer.tenant_id).get(anomaly_id)
        return page(request, "anomaly.html", anomaly=AnomalyOut.of(found))

    @post("/{anomaly_id:uuid}/acknowledge", operation_id="dashboardAcknowledgeAnomaly", include_in_schema=False)
    async def acknowledge(self, viewer: Viewer, db_session: AsyncSession, anomaly_id: uuid.UUID) -> Any:
        await AnomalyRepository(db_session, viewer.tenant_id).acknowledge(anomaly_id)
        return see_other(f"{PREFIX}/anomalies/{anomaly_id}", "acknowledged")


class ApiKeyPages(Controller):
    path = "/api-keys"

    async def _list(self, request: Request[Any, Any, Any], repo: ApiKeyRepository, status_code: int = 200, **context: Any) -> Any:
        keys = await repo.fetch(repo.scoped().order_by(ApiKey.created_at.desc()))
        return page(request, "api_keys.html", status_code, keys=keys, **context)

    @get(operation_id="dashboardApiKeys", include_in_schema=False)
    async def api_keys(self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, secret_box: SecretBox) -> Any:
        new_key = shown_once(request, secret_box).get("key")
        return await self._list(request, ApiKeyRepository(db_session, viewer.tenant_id), new_key=new_key, errors={})

    @post(operation_id="dashboardCreateApiKey", include_in_schema=False)
    async def create(self, request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, secret_box: SecretBox) -> Any:
        repo = ApiKeyRepository(db_session, viewer.tenant_id)
        name = field(await form(request), "name")
        if not 1 <= len(name) <= 200:
            return await self._list(request, repo, 400, errors={"name": "Give the key a name of 1 to 200 characters, e.g. “CI deploys”."})
        _key, plaintext = await repo.create(name)
        return see_other_showing(request, secret_box, f"{PREFIX}/api-keys", "key-created", key=plaintext)

    @post("/{key_id:uuid}/revoke", operation_id="dashboardRevokeApiKey", include_in_schema=False)
    async def revoke(self, viewer: Viewer, db_session: AsyncSession, key_id: uuid.UUID) -> Any:
        await ApiKeyRepository(db_session, viewer.tenant_id).revoke(key_id)
        return see_other(f"{PREFIX}/api-keys", "revoked")
