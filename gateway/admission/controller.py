"""``GET /api/v1/usage``: a tenant sees its admissions, refusals and limits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from litestar import get
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admission.schemas import UsageOut, UsageWindow
from gateway.admission.service import Admission, WindowCounts
from gateway.problems import not_found
from gateway.settings import Settings
from tenants.auth import authenticate_tenant
from tenants.limits import delivery_concurrency, effective_limits
from tenants.models import Tenant


def _window(counts: WindowCounts, length: int) -> UsageWindow:
    start = datetime.fromtimestamp(counts.start, UTC)
    return UsageWindow(start=start, end=start + timedelta(seconds=length), admitted=counts.admitted, refused=counts.refused)


@get(
    "/api/v1/usage",
    operation_id="getUsage",
    summary="Events admitted and refused per priority in the current and previous windows, and the limits",
    tags=["usage"],
    dependencies={"tenant_id": Provide(authenticate_tenant)},
)
async def usage(db_session: AsyncSession, settings: Settings, admission: Admission, tenant_id: uuid.UUID) -> UsageOut:
    tenant = await db_session.get(Tenant, tenant_id)
    if tenant is None:
        raise not_found("tenant")
    current, previous = await admission.usage(tenant_id)
    length = admission.window_seconds
    return UsageOut(
        window_seconds=length,
        current=_window(current, length),
        previous=_window(previous, length),
        limits=effective_limits(tenant, settings),
        delivery_concurrency=delivery_concurrency(tenant, settings),
    )
