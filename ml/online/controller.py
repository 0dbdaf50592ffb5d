"""``/api/v1/anomalies``: what the detectors raised for the tenant, acknowledging it, and the
tenant's detection settings (rule thresholds; whether the model is trained yet)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Literal

from litestar import Controller, get, patch, post
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.database import utcnow
from gateway.pagination import Page, page_of, paginate
from gateway.problems import Problem
from gateway.repository import TenantRepository, where_equal, within
from gateway.settings import Settings
from ml.forest import MIN_WINDOWS
from ml.online.models import Anomaly, FeatureWindowRow, TenantModelRow
from ml.online.schemas import AnomalyOut, DetectionOut, ThresholdsUpdate
from ml.rules import Thresholds
from tenants.auth import tenant_scoped
from tenants.models import Tenant


class AnomalyRepository(TenantRepository[Anomaly]):
    model = Anomaly
    noun = "anomaly"

    async def acknowledge(self, anomaly_id: uuid.UUID) -> Anomaly:
        """Mark as seen (once: a second acknowledgement keeps the first time)."""
        anomaly = await self.get(anomaly_id, for_update=True)
        anomaly.acknowledged_at = anomaly.acknowledged_at or utcnow()
        await self.session.commit()
        return anomaly


class AnomalyController(Controller):
    path = "/api/v1/anomalies"
    tags = ["anomalies"]
    dependencies = tenant_scoped("repo", AnomalyRepository)

    @get(operation_id="listAnomalies", summary="Anomalies, newest first")
    async def list_anomalies(
        self,
        repo: AnomalyRepository,
        status: Literal["open", "closed"] | None = None,
        kind: str | None = None,
        acknowledged: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[AnomalyOut]:
        """``since``/``until`` bound the window the anomaly started in."""
        query = where_equal(repo.scoped(), {Anomaly.kind: kind})
        if status is not None:
            query = query.where(Anomaly.ended_at.is_(None) if status == "open" else Anomaly.ended_at.is_not(None))
        if acknowledged is not None:
            query = query.where(Anomaly.acknowledged_at.is_not(None) if acknowledged else Anomaly.acknowledged_at.is_(None))
        query = within(query, Anomaly.started_at, since, until)
        rows = await repo.fetch(paginate(query, Anomaly.started_at, Anomaly.id, cursor, limit))
        return page_of(rows, limit, "started_at", AnomalyOut.of)

    @get("/{anomaly_id:uuid}", operation_id="getAnomaly")
    async def get_anomaly(self, repo: AnomalyRepository, anomaly_id: uuid.UUID) -> AnomalyOut:
        return AnomalyOut.of(await repo.get(anomaly_id))

    @post("/{anomaly_id:uuid}/acknowledge", operation_id="acknowledgeAnomaly", status_code=200, summary="Mark as seen")
    async def acknowledge(self, repo: AnomalyRepository, anomaly_id: uuid.UUID) -> AnomalyOut:
        return AnomalyOut.of(await repo.acknowledge(anomaly_id))

    @get("/detection", operation_id="getAnomalyDetection", summary="Thresholds, and whether the model is trained yet")
    async def detection(self, repo: AnomalyRepository, settings: Settings) -> DetectionOut:
        return await _detection(repo.session, repo.tenant_id, settings)

    @patch("/detection", operation_id="updateAnomalyThresholds", summary="Override rule thresholds")
    async def update_thresholds(self, repo: AnomalyRepository, settings: Settings, data: ThresholdsUpdate) -> DetectionOut:
        tenant = await repo.session.get_one(Tenant, repo.tenant_id, with_for_update=True)
        merged = {**(tenant.anomaly_thresholds or {}), **data.thresholds}
        overrides = {name: value for name, value in merged.items() if value is not None}
        try:
            Thresholds.with_overrides(overrides)
        except ValueError as exc:
            raise Problem(422, "invalid-thresholds", str(exc)) from None
        tenant.anomaly_thresholds = overrides or None
        await repo.session.commit()
        return await _detection(repo.session, repo.tenant_id, settings)


async def _detection(session: AsyncSession, tenant_id: uuid.UUID, settings: Settings) -> DetectionOut:
    overrides = (await session.get_one(Tenant, tenant_id)).anomaly_thresholds or {}
    trained_at = await session.scalar(select(TenantModelRow.trained_at).where(TenantModelRow.tenant_id == tenant_id))
    seen = await session.scalar(select(func.count()).where(FeatureWindowRow.tenant_id == tenant_id)) or 0
    if trained_at is None:
        reason = f"rules only: the model trains once {MIN_WINDOWS} windows of history exist ({seen} so far)"
    else:
        reason = "rules and the tenant's isolation forest"
    return DetectionOut(
        mode="rules_and_model" if trained_at else "rules_only",
        reason=reason,
        windows_seen=seen,
        min_windows=MIN_WINDOWS,
        model_trained_at=trained_at,
        window_seconds=settings.anomaly_window_seconds,
        thresholds={k: float(v) for k, v in dataclasses.asdict(Thresholds.with_overrides(overrides)).items()},
        overrides=overrides,
    )
