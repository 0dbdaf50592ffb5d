"""Tenant scoping lives here: every repository query starts from the tenant's own rows.

Another tenant's id is indistinguishable from a missing one (404), never a 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from gateway.database import Base, as_utc
from gateway.problems import Problem, not_found

M = TypeVar("M", bound=Base)


class TenantRepository(Generic[M]):
    model: ClassVar[type[Any]]
    noun: ClassVar[str]

    def __init__(self, session: AsyncSession, tenant_id: uuid.UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def scoped(self) -> Select[tuple[M]]:
        """The tenant's live rows (soft-deleted ones are gone for every caller)."""
        query = select(self.model).where(self.model.tenant_id == self.tenant_id)
        if hasattr(self.model, "deleted_at"):
            query = query.where(self.model.deleted_at.is_(None))
        return query

    async def get(self, row_id: uuid.UUID, *, for_update: bool = False) -> M:
        query = self.scoped().where(self.model.id == row_id)
        if for_update:
            query = query.with_for_update()
        row = await self.session.scalar(query)
        if row is None:
            raise not_found(self.noun)
        return row

    async def fetch(self, query: Select[tuple[M]]) -> list[M]:
        return list(await self.session.scalars(query))


def within(query: Select[Any], column: InstrumentedAttribute[Any], since: datetime | None, until: datetime | None) -> Select[Any]:
    """``since <= column < until``, each bound only when given; a window that ends before it starts is
    the client's mistake (400), as replays say, not an empty page."""
    if since is not None and until is not None and as_utc(since) >= as_utc(until):
        raise Problem(400, "invalid-window", "since must be before until")
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


def where_equal(query: Select[Any], filters: Mapping[InstrumentedAttribute[Any], object]) -> Select[Any]:
    """Add ``column == value`` for each filter the caller gave (None and "" mean not given)."""
    for column, value in filters.items():
        if value is not None and value != "":
            query = query.where(column == value)
    return query
