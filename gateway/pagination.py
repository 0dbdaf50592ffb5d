"""Keyset (cursor) pagination shared by every list route: newest first, stable under inserts."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from gateway.problems import Problem

T = TypeVar("T")
MAX_LIMIT = 200


class Page(msgspec.Struct, Generic[T]):
    data: list[T]
    next_cursor: str | None


def _encode(at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, row_id = raw.split("|", 1)
        return datetime.fromisoformat(at), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "invalid-cursor", "the cursor is not one this API returned") from None


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Problem(400, "invalid-limit", f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def paginate(
    query: Select[Any],
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[uuid.UUID],
    cursor: str | None,
    limit: int,
    *,
    oldest_first: bool = False,
) -> Select[Any]:
    """Order newest (or oldest) first and start after ``cursor``; fetch one extra row to know if more exist."""
    if cursor:
        at, row_id = _decode(cursor)
        if oldest_first:
            query = query.where(or_(time_column > at, and_(time_column == at, id_column > row_id)))
        else:
            query = query.where(or_(time_column < at, and_(time_column == at, id_column < row_id)))
    order = (time_column.asc(), id_column.asc()) if oldest_first else (time_column.desc(), id_column.desc())
    return query.order_by(*order).limit(check_limit(limit) + 1)


def page_of(rows: list[Any], limit: int, time_attr: str, shape: Any) -> Page[Any]:
    """Turn ``limit + 1`` fetched rows into a page of ``shape(row)`` and the next cursor."""
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    return Page(
        data=[shape(row) for row in rows],
        next_cursor=_encode(getattr(last, time_attr), last.id) if last is not None else None,
    )
