"""Tenant-scoped access to the event log and its delivery state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, or_

from gateway.events.models import Delivery, Event
from gateway.repository import TenantRepository


class EventRepository(TenantRepository[Event]):
    model = Event
    noun = "event"


class DeliveryRepository(TenantRepository[Delivery]):
    model = Delivery
    noun = "delivery"


def unleased(now: datetime) -> ColumnElement[bool]:
    """Deliveries no worker holds at ``now`` (never claimed, or their lease ran out)."""
    return or_(Delivery.locked_until.is_(None), Delivery.locked_until < now)
