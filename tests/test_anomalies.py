"""Anomaly detection online, on both backends: feature windows computed in SQL agree with the
offline builder on the same traffic; a card-testing burst through the real ingest route opens
one anomaly, delivered as ``anomaly.detected`` and closed (``anomaly.resolved``) when quiet;
thresholds per tenant; models trained from stored windows."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, select
from standardwebhooks.webhooks import Webhook

from gateway.database import create_engine, session_factory, utcnow
from gateway.ingest.tallies import IngestTally
from ml.features import Window
from ml.forest import MIN_WINDOWS, TenantModel
from ml.online.models import FeatureWindowRow, TenantModelRow, WindowRun
from ml.online.monitor import CATCH_UP_WINDOWS, AnomalyMonitor
from ml.online.training import retrain
from ml.online.windows import window_features
from ml.windows import WindowBuilder
from tests.conftest import Stack, TenantHandle, ingest_path, new_source, new_tenant
from tests.support.receiver import Script, Server, wait_until
from tests.support.stripe_events import signed_stripe, stripe_event


async def _fresh_minute() -> datetime:
    """Wait, if needed, so the scenario that follows fits in one window."""
    now = utcnow()
    if now.second >= 40:
        await asyncio.sleep(60.5 - now.second - now.microsecond / 1e6)
    return utcnow().replace(second=0, microsecond=0)


def _charge(name: str, *, customer: str, card: str | None = None, created: datetime | None = None, **changes: Any) -> dict[str, Any]:
    event = stripe_event(name, created=int((created or utcnow()).timestamp()))
    event["data"]["object"]["customer"] = customer
    if card is not None:
        event["data"]["object"].setdefault("payment_method_details", {}).setdefault("card", {})["fingerprint"] = card
    event["data"]["object"].update(changes)
    return event


async def _post(stack: Stack, source: dict[str, Any], event: dict[str, Any], secret: str | None = None) -> int:
    body, headers = signed_stripe(event, secret or source["secret"])
    return (await stack.client.post(ingest_path(source), content=body, headers=headers)).status_code


async def _events(stack: Stack, tenant: TenantHandle) -> list[dict[str, Any]]:
    listed = (await stack.client.get("/api/v1/events?limit=200", headers=tenant.auth)).json()["data"]
    return [(await stack.client.get(f"/api/v1/events/{e['id']}", headers=tenant.auth)).json() for e in reversed(listed)]


async def test_sql_feature_windows_agree_with_the_offline_builder(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    start = await _fresh_minute()
    sent_at = utcnow()
    traffic = [
        *[_charge("charge_failed", customer="cus_thief", card=f"fp_{i}", created=sent_at - timedelta(seconds=i)) for i in range(6)],
        _charge("charge_failed", customer="cus_honest", card="fp_x"),
        _charge("charge_succeeded", customer="cus_honest", card="fp_x"),
        _charge("charge_refunded", customer="cus_honest", card="fp_x", amount_refunded=70_000),
        stripe_event("refund_created", created=int(sent_at.timestamp()) - 90),
        *[stripe_event(name, created=int(sent_at.timestamp())) for name in ("refund_updated", "refund_failed")],
        *[stripe_event(name, created=int(sent_at.timestamp())) for name in ("credit_note_created", "credit_note_voided")],
        _charge("invoice_paid", customer="cus_lapsing"),
        stripe_event("invoice_payment_paid", created=int(sent_at.timestamp())),
        _charge("subscription_deleted", customer="cus_lapsing"),
        *[stripe_event(name, created=int(sent_at.timestamp())) for name in ("payment_intent_succeeded", "payment_intent_payment_failed")],
    ]
    failed_invoice = stripe_event("invoice_paid", type="invoice.payment_failed", created=int(sent_at.timestamp()))
    failed_invoice["data"]["object"]["customer"] = "cus_lapsing"
    traffic.insert(5, failed_invoice)
    for event in traffic:
        assert await _post(stack, source, event) == 200
    assert await _post(stack, source, traffic[0]) == 200  # a provider retry: a duplicate
    assert await _post(stack, source, traffic[1]) == 200
    assert await _post(stack, source, _charge("charge_failed", customer="x"), secret="whsec_wrong") == 400

    engine = create_engine(stack.settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            online = await window_features(session, start, 60, lapse_lookback=timedelta(days=30))
    finally:
        await engine.dispose()

    builder = WindowBuilder(60)
    stored = await _events(stack, tenant)
    assert len(stored) == len(traffic)
    for event in stored:
        builder.add(tenant.id, datetime.fromisoformat(event["received_at"]), event["payload"])
    for repeat in (traffic[0], traffic[1]):
        builder.add(tenant.id, utcnow(), repeat)
    builder.add(tenant.id, utcnow(), _charge("charge_failed", customer="x"), signature_valid=False)
    [offline] = [w for w in builder.flush() if w.start == start]

    window = online[uuid.UUID(tenant.id)]
    assert window.as_dict() == offline.as_dict()
    assert (window.charge_failed, window.failed_cards, window.failed_customers) == (7, 7, 3)  # incl. the failed invoice's customer
    assert (window.duplicates, window.bad_signatures, window.lapses, window.refunds) == (2, 1, 1, 2)
    assert (window.payment_succeeded, window.payment_failed) == (1, 1)
    # issued once each (the fixtures' refund 1,000 and credit note 1,099); its update, failure and void add nothing
    assert window.max_refund == 70_000 and window.negative_amount == 70_000 + 1000 + 1099
    assert window.max_credit == 1099  # the credit note; refunds are not credits
    assert window.max_charge == 3000  # the one charge.succeeded; failed charges are not sales
    assert window.lag_max is not None and window.lag_max >= 90


async def _anomalies(stack: Stack, tenant: TenantHandle, **filters: str) -> list[dict[str, Any]]:
    response = await stack.client.get("/api/v1/anomalies", params=filters, headers=tenant.auth)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_a_card_testing_burst_opens_one_anomaly_delivered_then_resolved(stack: Stack) -> None:
    tenant, other = await new_tenant(stack.client), await new_tenant(stack.client, "Other")
    source = await new_source(stack.client, tenant)
    async with Server(Script()) as alerts, Server(Script()) as business:
        ops = await stack.endpoint(tenant, alerts.url, event_types=["anomaly.*"])
        await stack.endpoint(tenant, business.url)  # "*" gets Stripe events, never Hookgate's own
        start = await _fresh_minute()
        for i in range(40):  # stolen cards tried against one customer, each one failing
            assert await _post(stack, source, _charge("charge_failed", customer="cus_shop", card=f"fp_stolen_{i}")) == 200

        engine = create_engine(stack.settings.database_url, pool_size=2)
        monitor = AnomalyMonitor(session_factory(engine), stack.settings, retrains=False)
        assert await monitor.score_window(start) == 1
        assert await monitor.score_window(start) is None  # claimed: scored once, whoever asks
        [anomaly] = await _anomalies(stack, tenant, status="open")
        assert anomaly["kind"] == "card_testing" and anomaly["severity"] in ("warning", "critical")
        assert anomaly["explanation"] and any("card" in line for line in anomaly["explanation"])

        await wait_until(lambda: alerts.requests, what="the anomaly.detected delivery")
        detected = Webhook(ops["secret"]).verify(alerts.requests[0].body, alerts.requests[0].headers)
        assert detected["type"] == "anomaly.detected" and detected["data"]["anomaly_id"] == anomaly["id"]
        assert detected["data"]["kind"] == "card_testing"

        for minute in range(1, 2):  # the burst goes on: the same anomaly is updated, not a new one
            for i in range(40):
                event = _charge("charge_failed", customer="cus_shop", card=f"fp_more_{minute}_{i}")
                assert await _post(stack, source, event) == 200
        await monitor.score_window(start + timedelta(minutes=1))
        [still] = await _anomalies(stack, tenant)
        assert still["id"] == anomaly["id"]
        for minute in range(2, 30):  # quiet windows close it (once the burst is out of the rules' horizon)
            await monitor.score_window(start + timedelta(minutes=minute))
            if await _anomalies(stack, tenant, status="closed"):
                break
        [closed] = await _anomalies(stack, tenant, status="closed")
        assert closed["id"] == anomaly["id"] and closed["ended_at"]
        await wait_until(lambda: len(alerts.requests) == 2, what="the anomaly.resolved delivery")
        assert json.loads(alerts.requests[1].body)["type"] == "anomaly.resolved"
        assert not [r for r in business.requests if json.loads(r.body)["type"].startswith("anomaly.")]

        assert (await stack.client.post(f"/api/v1/anomalies/{anomaly['id']}/acknowledge", headers=other.auth)).status_code == 404
        assert (await stack.client.get(f"/api/v1/anomalies/{anomaly['id']}", headers=other.auth)).status_code == 404
        assert await _anomalies(stack, other) == []
        acked = await stack.client.post(f"/api/v1/anomalies/{anomaly['id']}/acknowledge", headers=tenant.auth)
        assert acked.status_code == 200 and acked.json()["acknowledged_at"]
        assert await _anomalies(stack, tenant, acknowledged="false") == []
        await engine.dispose()


async def test_a_window_no_one_scored_neither_drops_silent_tenants_nor_stays_unscored(stack: Stack) -> None:
    """The database was down past a window's end (or every worker was): the next window still
    carries the tenants of the last one scored (silent ones too: a volume drop is their silence),
    and the monitor scores the missed windows late, oldest first, up to CATCH_UP_WINDOWS."""
    tenant = await new_tenant(stack.client)
    source = await new_source(stack.client, tenant)
    start = await _fresh_minute()
    assert await _post(stack, source, _charge("charge_succeeded", customer="cus_1")) == 200
    engine = create_engine(stack.settings.database_url, pool_size=2)
    monitor = AnomalyMonitor(session_factory(engine), stack.settings, retrains=False)
    minute = timedelta(minutes=1)
    try:
        assert await monitor.score_window(start) == 1
        assert await monitor.score_window(start + 2 * minute) == 1  # start + 1 never scored: still carried
        due = await monitor._unscored(start + 5 * minute)  # the missed ones, oldest first, within reach
        assert [d for d in due if d >= start] == [start + minute, start + 3 * minute, start + 4 * minute, start + 5 * minute]
        assert due == sorted(due) and due[0] >= start + 6 * minute - CATCH_UP_WINDOWS * minute  # an hour back at most
        assert await monitor._score_each(due)
        assert await monitor._unscored(start + 5 * minute) == []
        late = await monitor.score_window(start + minute)  # already scored by the catch-up
        assert late is None
    finally:
        await engine.dispose()


async def test_refunds_summing_past_64_bits_are_scored_with_everyone_else(stack: Stack) -> None:
    """Two refunds near the amount column's limit: SQLite's integer sum() overflowed and failed the
    window for every tenant (its total() is a float); Postgres sums them as numeric."""
    tenant, other = await new_tenant(stack.client), await new_tenant(stack.client, "Other")
    source, others = await new_source(stack.client, tenant), await new_source(stack.client, other)
    start = await _fresh_minute()
    for n in range(2):
        refund = _charge("charge_refunded", customer=f"cus_{n}", amount=2**63 - 1, amount_refunded=2**63 - 1)
        assert await _post(stack, source, refund) == 200
    assert await _post(stack, others, _charge("charge_succeeded", customer="cus_other")) == 200
    engine = create_engine(stack.settings.database_url, pool_size=2)
    try:
        assert await AnomalyMonitor(session_factory(engine), stack.settings, retrains=False).score_window(start) == 2
    finally:
        await engine.dispose()
    [anomaly] = await _anomalies(stack, tenant)
    assert anomaly["kind"] == "negative_invoice" and anomaly["score"] <= 1.0


async def test_one_tenant_s_unreadable_model_or_window_does_not_stop_the_others(stack: Stack) -> None:
    """A model another release trained (or a damaged one) and a stored window with a feature this
    release does not know (a rollback): the window is scored for every tenant, the bad model is
    deleted so that the retrain job refits it, and its tenant is judged by the rules meanwhile."""
    broken, other = await new_tenant(stack.client), await new_tenant(stack.client, "Other")
    source, others = await new_source(stack.client, broken), await new_source(stack.client, other)
    start = await _fresh_minute()
    assert await _post(stack, source, _charge("charge_succeeded", customer="cus_b")) == 200
    refund = _charge("charge_refunded", customer="cus_o", amount=10**9, amount_refunded=10**9)
    assert await _post(stack, others, refund) == 200
    engine = create_engine(stack.settings.database_url, pool_size=2)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(TenantModelRow), [{"tenant_id": uuid.UUID(broken.id), "trained_at": utcnow(), "windows": 1,
                                                               "blob": b"a model of another feature set"}])
            await connection.execute(insert(FeatureWindowRow), [{
                "tenant_id": uuid.UUID(broken.id), "start": start - timedelta(minutes=1), "seconds": 60,
                "features": {"events": 0, "families": {}, "max_debit": 0}, "last_active": start - timedelta(minutes=1),
            }])
        monitor = AnomalyMonitor(session_factory(engine), stack.settings, retrains=False)
        assert await monitor.score_window(start) == 2
        scored = REGISTRY.get_sample_value("hookgate_anomaly_window_scored_timestamp_seconds")
        assert scored == (start + timedelta(minutes=1)).timestamp()  # the stall alert's clock moved
        assert await monitor.score_window(start - timedelta(days=1)) is not None  # a late, older window (no one scored it)
        assert REGISTRY.get_sample_value("hookgate_anomaly_window_scored_timestamp_seconds") == scored  # does not move it back
        async with engine.connect() as connection:
            assert (await connection.execute(select(TenantModelRow.tenant_id))).all() == []  # for the retrain job to refit
    finally:
        await engine.dispose()
    [anomaly] = await _anomalies(stack, other)
    assert anomaly["kind"] == "negative_invoice"


async def test_scoring_a_window_prunes_tallies_and_claims_past_retention(stack: Stack) -> None:
    """Ingest tallies (anyone with an ingest URL can add rows: bad signatures) and window claims
    are pruned with the feature windows; every window's features read the tallies by minute."""
    tenant = await new_tenant(stack.client)
    start = await _fresh_minute()
    old = start - timedelta(days=stack.settings.anomaly_retention_days, minutes=1)
    recent = start - timedelta(days=1)
    engine = create_engine(stack.settings.database_url, pool_size=2)
    try:
        async with engine.begin() as connection:
            for minute in (old, recent):
                await connection.execute(insert(IngestTally).values(tenant_id=uuid.UUID(tenant.id), minute=minute, duplicates=1, bad_signatures=0))
                await connection.execute(insert(WindowRun).values(window_start=minute, finished_at=minute, tenants=0))
        await AnomalyMonitor(session_factory(engine), stack.settings, retrains=False).score_window(start)
        async with engine.connect() as connection:
            tallies = set((await connection.execute(select(IngestTally.minute))).scalars())
            runs = set((await connection.execute(select(WindowRun.window_start))).scalars())
    finally:
        await engine.dispose()
    assert old not in tallies and recent in tallies
    assert old not in runs and {recent, start} <= runs


async def test_thresholds_are_per_tenant_and_validated(stack: Stack) -> None:
    tenant = await new_tenant(stack.client)
    detection = (await stack.client.get("/api/v1/anomalies/detection", headers=tenant.auth)).json()
    assert detection["mode"] == "rules_only" and "rules only" in detection["reason"] and detection["overrides"] == {}
    default = detection["thresholds"]["duplicate_min"]
    patched = await stack.client.patch("/api/v1/anomalies/detection", json={"thresholds": {"duplicate_min": default * 5}}, headers=tenant.auth)
    assert patched.status_code == 200 and patched.json()["thresholds"]["duplicate_min"] == default * 5
    unknown = await stack.client.patch("/api/v1/anomalies/detection", json={"thresholds": {"no_such_rule": 1}}, headers=tenant.auth)
    assert unknown.status_code == 422 and "no_such_rule" in unknown.json()["detail"]
    for bad in ({"lapse_horizon_windows": 0, "lapse_min": -1}, {"duplicate_min": -5}):
        refused = await stack.client.patch("/api/v1/anomalies/detection", json={"thresholds": bad}, headers=tenant.auth)
        assert refused.status_code == 422 and refused.json()["type"].endswith("/invalid-thresholds"), refused.text
        assert all(name in refused.json()["detail"] for name in bad)
    kept = (await stack.client.get("/api/v1/anomalies/detection", headers=tenant.auth)).json()
    assert kept["overrides"] == {"duplicate_min": default * 5}
    restored = await stack.client.patch("/api/v1/anomalies/detection", json={"thresholds": {"duplicate_min": None}}, headers=tenant.auth)
    assert restored.json()["thresholds"]["duplicate_min"] == default and restored.json()["overrides"] == {}


async def test_models_train_from_stored_windows_and_switch_detection_on(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    fitted_on: list[threading.Thread] = []
    fit = TenantModel.fit

    def recorded(*args: Any, **kwargs: Any) -> TenantModel | None:
        fitted_on.append(threading.current_thread())
        return fit(*args, **kwargs)

    monkeypatch.setattr(TenantModel, "fit", staticmethod(recorded))
    tenant = await new_tenant(stack.client)
    tenant_id = uuid.UUID(tenant.id)
    rng = random.Random(7)
    count = MIN_WINDOWS + 100
    first = utcnow().replace(second=0, microsecond=0) - timedelta(days=1, minutes=count)  # long before any live window
    rows = []
    for n in range(count):
        start = first + timedelta(minutes=n)
        events = rng.randint(20, 30)
        window = Window(tenant=tenant.id, start=start, seconds=60, events=events, families={"charge": events},
                        charge_succeeded=events - 1, charge_failed=1, failed_customers=1, failed_cards=1, lag_p50=1.0, lag_max=2.0)
        rows.append({"tenant_id": tenant_id, "start": start, "seconds": 60, "features": FeatureWindowRow.features_of(window), "last_active": start})
    engine = create_engine(stack.settings.database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(FeatureWindowRow), rows)
        sessions = session_factory(engine)
        assert await retrain(sessions, stack.settings) == 1
        assert fitted_on and threading.main_thread() not in fitted_on  # off the event loop's thread
        assert await retrain(sessions, stack.settings) == 0  # fresh: nothing due
        detection = (await stack.client.get("/api/v1/anomalies/detection", headers=tenant.auth)).json()
        # >=: the running monitor carries the tenant (active within the history span) on with empty windows
        assert detection["mode"] == "rules_and_model" and detection["model_trained_at"] and detection["windows_seen"] >= count

        monitor = AnomalyMonitor(sessions, stack.settings, retrains=False)
        for minute in (1, 2):  # the tenant is carried on with empty windows: its events stopped
            assert await monitor.score_window(rows[-1]["start"] + timedelta(minutes=minute)) == 1
    finally:
        await engine.dispose()
    [drop] = await _anomalies(stack, tenant)
    assert drop["kind"] == "volume_drop" and drop["status"] == "open"  # far below the typical ~25 a window
