"""API shape of ``GET /api/v1/usage``."""

from __future__ import annotations

from datetime import datetime

import msgspec

from tenants.schemas import LimitOut


class UsageWindow(msgspec.Struct):
    start: datetime
    end: datetime
    admitted: dict[str, int]
    refused: dict[str, int]


class UsageOut(msgspec.Struct):
    window_seconds: int
    current: UsageWindow
    previous: UsageWindow
    limits: dict[str, LimitOut]
    delivery_concurrency: int
