"""Tenant-scoped access to the event log and its delivery state."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, or_

from gateway.events.models import DEAD, Delivery, Event
from gateway.problems import Problem
from gateway.repository import TenantRepository


class EventRepository(TenantRepository[Event]):
    model = Event
    noun = "event"


class DeliveryRepository(TenantRepository[Delivery]):
    model = Delivery
    noun = "delivery"

    async def purge_dead(self, delivery_id: uuid.UUID) -> None:
        """Delete a dead letter (its event stays); 409 for a delivery that is not dead."""
        delivery = await self.get(delivery_id, for_update=True)
        if delivery.status != DEAD:
            raise Problem(409, "not-dead", f"only dead deliveries can be purged; this one is {delivery.status}")
        await self.session.delete(delivery)
        await self.session.commit()


def unleased(now: datetime) -> ColumnElement[bool]:
    """Deliveries no worker holds at ``now`` (never claimed, or their lease ran out)."""
    return or_(Delivery.locked_until.is_(None), Delivery.locked_until < now)
