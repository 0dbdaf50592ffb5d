"""Group commit on the ingest path: batches form under load, a batch is one statement, and a
duplicate inside one batch is stored once — on both backends, through the store and the route."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from gateway.database import create_engine
from gateway.events.models import Event
from gateway.events.store import event_row
from gateway.ingest.group_commit import GroupCommit
from gateway.ingest.tallies import IngestTally
from gateway.metrics import INGEST_BATCH_ROWS
from tests.conftest import TenantHandle, ingest_path, new_source
from tests.support.stripe_events import signed_stripe, stripe_event


@pytest.fixture
async def engine(database_url: str) -> Any:
    engine = create_engine(database_url, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
async def group_commit() -> Any:
    """Makes group commits; each returns its kept connections at teardown, before its engine goes."""
    made: list[GroupCommit] = []

    def make(engine: Any, doorbell: Any = None) -> GroupCommit:
        made.append(GroupCommit(engine, doorbell or _Doorbell(), max_rows=100, concurrency=1))
        return made[-1]

    yield make
    for commit in made:
        await commit.aclose()


async def _source_ids(client: AsyncTestClient[Litestar], tenant: TenantHandle) -> tuple[uuid.UUID, uuid.UUID, dict[str, Any]]:
    source = await new_source(client, tenant)
    return uuid.UUID(tenant.id), uuid.UUID(source["id"]), source


def _row(tenant_id: uuid.UUID, source_id: uuid.UUID, external_id: str) -> dict[str, object]:
    return event_row(tenant_id, source_id, external_id=external_id, type="charge.succeeded", created_at=None,
                     priority="critical", body=b"{}", headers={})


class _Doorbell:
    """Records each ring, and what another connection could read of its events when it rang."""

    def __init__(self, engine: Any = None) -> None:
        self._engine = engine
        self.rings: list[list[uuid.UUID]] = []
        self.visible: list[int] = []

    async def ring(self, event_ids: list[uuid.UUID]) -> None:
        self.rings.append(event_ids)
        if self._engine is not None:
            async with self._engine.connect() as connection:
                self.visible.append(await connection.scalar(select(func.count()).select_from(Event).where(Event.id.in_(event_ids))))


def _batches() -> tuple[float, float]:
    """(batches, rows) observed so far by the batch-size histogram."""
    samples = {s.name: s.value for metric in INGEST_BATCH_ROWS.collect() for s in metric.samples}
    return samples["hookgate_ingest_commit_batch_rows_count"], samples["hookgate_ingest_commit_batch_rows_sum"]


async def _stored(engine: Any, *external_ids: str) -> dict[str, uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Event.external_id, Event.id).where(Event.external_id.in_(external_ids)))
        return {row.external_id: row.id for row in rows}


async def test_rows_arriving_together_commit_together_and_a_repeat_is_stored_once(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, engine: Any, group_commit: Any
) -> None:
    tenant_id, source_id, _ = await _source_ids(client, tenant)
    commit = group_commit(engine)
    batches_before, rows_before = _batches()
    # Submitted in one turn of the event loop: one batch (gateway.batching), a repeat inside it.
    names = ["evt_first", "evt_a", "evt_b", "evt_a", "evt_c"]
    outcomes = await asyncio.gather(*(commit.store(_row(tenant_id, source_id, name)) for name in names))
    batches_after, rows_after = _batches()
    assert (batches_after - batches_before, rows_after - rows_before) == (1, 5)

    stored = await _stored(engine, "evt_first", "evt_a", "evt_b", "evt_c")
    assert [o.id for o in outcomes] == [stored[name] for name in names]
    assert [o.duplicate for o in outcomes] == [False, False, False, True, False]

    again = await commit.store(_row(tenant_id, source_id, "evt_b"))  # already stored: a plain duplicate
    assert again.id == stored["evt_b"] and again.duplicate
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(Event)) == 4
        assert await connection.scalar(select(func.sum(IngestTally.duplicates))) == 2


async def test_a_failing_batch_fails_every_caller_in_it_and_stores_none_of_them(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, engine: Any, group_commit: Any
) -> None:
    tenant_id, source_id, _ = await _source_ids(client, tenant)
    commit = group_commit(engine)
    orphan = _row(uuid.uuid4(), source_id, "evt_orphan")  # no such tenant: the foreign key fails the batch
    await commit.store(_row(tenant_id, source_id, "evt_before"))
    rows = [_row(tenant_id, source_id, "evt_x"), orphan, _row(tenant_id, source_id, "evt_y")]  # one batch
    outcomes = await asyncio.gather(*(commit.store(row) for row in rows), return_exceptions=True)
    assert all(isinstance(outcome, IntegrityError) for outcome in outcomes)
    assert set(await _stored(engine, "evt_before", "evt_x", "evt_orphan", "evt_y")) == {"evt_before"}

    later = await commit.store(_row(tenant_id, source_id, "evt_x"))  # the store is usable after a failed batch
    assert not later.duplicate


async def test_concurrent_ingests_of_one_event_store_it_once_and_both_get_200(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, engine: Any
) -> None:
    _, _, source = await _source_ids(client, tenant)
    event = stripe_event()
    body, headers = signed_stripe(event, source["secret"])
    others = [signed_stripe(stripe_event(), source["secret"]) for _ in range(6)]
    requests = [(body, headers), *others, (body, headers)]
    responses = await asyncio.gather(*(client.post(ingest_path(source), content=b, headers=h) for b, h in requests))
    assert [r.status_code for r in responses] == [200] * len(requests)
    first, last = responses[0].json(), responses[-1].json()
    assert first["id"] == last["id"] and sorted([first["duplicate"], last["duplicate"]]) == [False, True]
    assert len({r.json()["id"] for r in responses}) == 7
    assert len(await _stored(engine, event["id"])) == 1


async def test_a_duplicate_tally_that_fails_does_not_change_the_answers(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, engine: Any, monkeypatch: pytest.MonkeyPatch, group_commit: Any
) -> None:
    """The events are committed before the tally: its failure is logged, and the callers still learn
    what was stored and what was a duplicate."""
    tenant_id, source_id, _ = await _source_ids(client, tenant)
    commit = group_commit(engine)
    first = await commit.store(_row(tenant_id, source_id, "evt_once"))
    monkeypatch.setattr("gateway.ingest.group_commit.bump", lambda *_args: text("UPDATE no_such_table SET n = 1"))
    again, fresh = await asyncio.gather(commit.store(_row(tenant_id, source_id, "evt_once")), commit.store(_row(tenant_id, source_id, "evt_new")))
    assert (again.id, again.duplicate) == (first.id, True) and not fresh.duplicate
    assert set(await _stored(engine, "evt_once", "evt_new")) == {"evt_once", "evt_new"}


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite has no server connection to lose
@pytest.mark.parametrize("slots", [1, 2])
async def test_a_batch_that_meets_a_dead_connection_runs_once_more_on_a_new_one(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, database_url: str, engine: Any, slots: int
) -> None:
    """Each commit slot keeps its connection between batches and does not ping it: a connection the
    server dropped (a restart, a failover) costs the batch one retry, not its callers a 503. The
    retry does not take another kept connection, which died in the same outage."""
    tenant_id, source_id, _ = await _source_ids(client, tenant)
    unpinged = create_engine(database_url, pool_size=slots, pre_ping=False)
    commit = GroupCommit(unpinged, _Doorbell(), max_rows=1, concurrency=slots)  # a row a batch: every slot busy
    try:
        await asyncio.gather(*(commit.store(_row(tenant_id, source_id, f"evt_before_{n}")) for n in range(slots)))
        async with engine.connect() as connection:
            killed = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle' AND query LIKE 'INSERT INTO events%'"
                )
            )
        assert killed == slots  # the kept connections, idle after their batches
        after = await commit.store(_row(tenant_id, source_id, "evt_after"))
        assert not after.duplicate
        assert (await _stored(engine, "evt_after"))["evt_after"] == after.id
    finally:
        await commit.aclose()
        await unpinged.dispose()


async def test_a_row_stored_again_with_its_own_id_is_new_not_a_duplicate(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, engine: Any, group_commit: Any
) -> None:
    """What the retry after a dead connection does when the first attempt had committed: the row is
    found under its own id, so its caller learns it was stored, as it was."""
    tenant_id, source_id, _ = await _source_ids(client, tenant)
    commit = group_commit(engine)
    row = _row(tenant_id, source_id, "evt_twice")
    first = await commit.store(row)
    again = await commit.store(row)
    assert (again.id, again.duplicate) == (first.id, False) == (row["id"], False)
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(Event)) == 1
        assert await connection.scalar(select(func.coalesce(func.sum(IngestTally.duplicates), 0))) == 0


async def test_a_committed_batch_rings_once_with_its_new_events_and_only_after_the_commit(
    client: AsyncTestClient[Litestar], tenant: TenantHandle, engine: Any, group_commit: Any
) -> None:
    tenant_id, source_id, _ = await _source_ids(client, tenant)
    await group_commit(engine).store(_row(tenant_id, source_id, "evt_old"))
    doorbell = _Doorbell(engine)
    commit = group_commit(engine, doorbell)
    names = ["evt_first", "evt_a", "evt_old", "evt_b", "evt_a"]  # one stored before, one repeated in the batch
    outcomes = await asyncio.gather(*(commit.store(_row(tenant_id, source_id, name)) for name in names))
    while not doorbell.visible:  # the ring runs in a task of its own, beside the answers
        await asyncio.sleep(0.01)
    new = [outcomes[0], outcomes[1], outcomes[3]]
    assert doorbell.rings == [[o.id for o in new]]  # the batch's new events, one ring: no duplicate rings again
    assert doorbell.visible == [3]  # the ring found its events committed


async def test_a_shutdown_lets_the_last_batches_ring_before_it_returns(engine: Any, client: AsyncTestClient[Litestar], tenant: TenantHandle) -> None:
    """A process that stops right after a commit still rings for it (else its events waited for the
    sweeper), but a ring that cannot go does not hold the stop."""

    class _SlowDoorbell(_Doorbell):
        async def ring(self, event_ids: list[uuid.UUID]) -> None:
            await asyncio.sleep(0.3)  # Redis far away
            await super().ring(event_ids)

    tenant_id, source_id, _ = await _source_ids(client, tenant)
    doorbell = _SlowDoorbell()
    commit = GroupCommit(engine, doorbell, max_rows=100, concurrency=1)
    stored = await commit.store(_row(tenant_id, source_id, "evt_last_before_stop"))
    await commit.shutdown()
    assert doorbell.rings == [[stored.id]]
