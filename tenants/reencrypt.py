"""Re-encrypt every secret at rest under the first ``HOOKGATE_SECRET_KEY``: the step of a key
rotation after which the old key can leave the list.

Safe to run while the gateway and workers serve: each batch is its own short transaction, and a
row is only rewritten if it still holds the ciphertext that was read (a tenant rotating that
secret meanwhile wins). Running it twice is harmless. A row no key can decrypt is counted and
left as it is, so one bad row does not stop the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from gateway.idempotency.models import IdempotentRequest
from tenants.crypto import SecretBox
from tenants.endpoints.models import EndpointSecret
from tenants.sources.models import Source, SourceSecret

# Every encrypted column there is; tests/test_secret_key_rotation.py checks that none is missing.
ENCRYPTED: tuple[InstrumentedAttribute[Any], ...] = (
    SourceSecret.ciphertext,
    EndpointSecret.ciphertext,
    Source.stripe_api_key,
    IdempotentRequest.body,
)


@dataclass
class Rotation:
    rewritten: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)


async def reencrypt_all(sessions: async_sessionmaker[AsyncSession], box: SecretBox, batch: int = 500) -> Rotation:
    rotation = Rotation()
    for column in ENCRYPTED:
        name = f"{column.class_.__tablename__}.{column.key}"
        rotation.rewritten[name], rotation.unreadable[name] = await _reencrypt_column(sessions, box, column, batch)
    return rotation


async def _reencrypt_column(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, column: InstrumentedAttribute[Any], batch: int
) -> tuple[int, int]:
    table = column.class_.__table__
    key = tuple(table.primary_key.columns)
    rewritten = unreadable = 0
    last: tuple[Any, ...] | None = None
    while True:
        async with sessions() as session, session.begin():
            query = select(*key, column).where(column.is_not(None)).order_by(*key).limit(batch)
            if last is not None:
                query = query.where(tuple_(*key) > tuple_(*last))
            rows = (await session.execute(query)).all()
            for row in rows:
                *identity, ciphertext = row
                try:
                    fresh = box.reencrypt(ciphertext)
                except ValueError:
                    unreadable += 1
                    continue
                same_row = [part == value for part, value in zip(key, identity, strict=True)]
                result = await session.execute(update(table).where(*same_row, column == ciphertext).values({column.key: fresh}))
                rewritten += result.rowcount
        if len(rows) < batch:
            return rewritten, unreadable
        last = tuple(rows[-1])[: len(key)]
