"""A tenant's admission limits and delivery concurrency: operator overrides over settings defaults.

Overrides are stored as given (``{"low": {"rate_per_second": 5}}``), so a field the operator
never set keeps following the settings default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.events.priority import PRIORITIES, Priority
from gateway.limiter import Rate
from gateway.settings import Settings
from tenants.models import Tenant
from tenants.schemas import LimitOut, LimitsUpdate

Overrides = Mapping[str, Mapping[str, Any]]


def default_rates(settings: Settings) -> dict[Priority, Rate]:
    """The settings' ``ingest_limit_<priority>`` values (``rate/burst``) as rates."""
    return {priority: Rate.parse(getattr(settings, f"ingest_limit_{priority}")) for priority in PRIORITIES}


def rate_for(priority: Priority, overrides: Overrides | None, defaults: Mapping[Priority, Rate]) -> Rate:
    default = defaults[priority]
    override = (overrides or {}).get(priority)
    if not override:
        return default
    return Rate(override.get("rate_per_second", default.per_second), override.get("burst", default.burst))


def effective_limits(tenant: Tenant, settings: Settings) -> dict[str, LimitOut]:
    """What the API shows: each priority's rate, burst and whether the tenant overrides it."""
    overrides, defaults = tenant.limits or {}, default_rates(settings)
    shown = {}
    for priority in PRIORITIES:
        rate = rate_for(priority, overrides, defaults)
        source = "tenant" if overrides.get(priority) else "default"
        shown[priority] = LimitOut(rate_per_second=rate.per_second, burst=rate.burst, source=source)
    return shown


def merged_overrides(stored: Overrides | None, update: LimitsUpdate) -> dict[str, dict[str, Any]] | None:
    """Apply a partial update: given fields replace, ``null`` for a priority returns it to the defaults."""
    merged = {priority: dict(fields) for priority, fields in (stored or {}).items()}
    for priority, change in (update.limits or {}).items():
        if change is None:
            merged.pop(priority, None)
            continue
        fields = merged.setdefault(priority, {})
        fields.update({k: v for k, v in msgspec.structs.asdict(change).items() if v is not msgspec.UNSET})
    return merged or None


def delivery_concurrency(tenant: Tenant, settings: Settings) -> int:
    return tenant.delivery_concurrency or settings.tenant_delivery_concurrency
