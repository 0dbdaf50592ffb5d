"""Retraining each tenant's isolation forest on its trailing windows, on a schedule (an arq cron
job in production; the monitor's own loop in embedded mode)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.database import dialect_insert, utcnow
from gateway.settings import Settings
from ml.forest import TenantModel
from ml.online.models import FeatureWindowRow, TenantModelRow

_log = logging.getLogger("hookgate.anomalies")
_BATCH = 100  # tenants fitted per run: the oldest models first, the rest on the next run


async def retrain(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Fit the tenants whose model is missing or stale; returns how many models were stored."""
    async with sessions() as session:
        due = await _due(session, settings)
    stored = 0
    for tenant_id in due:
        try:
            async with sessions() as session, session.begin():
                stored += await _fit(session, settings, tenant_id)
        except Exception:  # noqa: BLE001 - the database may be down; one tenant's data must not stop the others' refits
            _log.exception("tenant %s: anomaly model not refitted", tenant_id)
    if stored:
        _log.info("anomaly models retrained", extra={"models": stored})
    return stored


async def _due(session: AsyncSession, settings: Settings) -> list[uuid.UUID]:
    """Tenants in the latest scored window (every tenant still watched has one, empty or not)."""
    latest = await session.scalar(select(func.max(FeatureWindowRow.start)))
    if latest is None:
        return []
    stale = utcnow() - timedelta(seconds=settings.anomaly_retrain_seconds)
    query = (
        select(FeatureWindowRow.tenant_id)
        .outerjoin(TenantModelRow, TenantModelRow.tenant_id == FeatureWindowRow.tenant_id)
        .where(FeatureWindowRow.start == latest, or_(TenantModelRow.trained_at.is_(None), TenantModelRow.trained_at < stale))
        .order_by(TenantModelRow.trained_at.asc().nulls_first())
        .limit(_BATCH)
    )
    return list(await session.scalars(query))


async def _fit(session: AsyncSession, settings: Settings, tenant_id: uuid.UUID) -> bool:
    seconds = settings.anomaly_window_seconds
    since = utcnow() - timedelta(seconds=seconds * settings.anomaly_training_windows)
    rows = await session.scalars(
        select(FeatureWindowRow).where(FeatureWindowRow.tenant_id == tenant_id, FeatureWindowRow.start >= since).order_by(FeatureWindowRow.start)
    )
    history = [row.window() for row in rows]
    # Off the event loop: a fit takes ~0.4 s of CPU, and this loop also dispatches deliveries (the
    # worker) or answers ingest (embedded mode); in a thread it yields every switch interval.
    model = await asyncio.to_thread(TenantModel.fit, history)
    if model is None:  # too little history: rules only, for now
        return False
    values = {"tenant_id": tenant_id, "trained_at": utcnow(), "windows": len(history), "blob": model.dumps()}
    upsert = dialect_insert(session.bind.dialect.name)(TenantModelRow).values(values)
    await session.execute(
        upsert.on_conflict_do_update(index_elements=["tenant_id"], set_={k: v for k, v in values.items() if k != "tenant_id"})
    )
    return True
