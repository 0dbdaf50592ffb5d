"""Tenant-scoped access to the event log and its delivery state."""

from __future__ import annotations

from gateway.events.models import Delivery, Event
from gateway.repository import TenantRepository


class EventRepository(TenantRepository[Event]):
    model = Event
    noun = "event"


class DeliveryRepository(TenantRepository[Delivery]):
    model = Delivery
    noun = "delivery"
