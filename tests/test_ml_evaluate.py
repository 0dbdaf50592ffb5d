"""The offline CLI end to end (simulate, then evaluate, as subprocesses) and the scoring it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ml.evaluate import Label, evaluate, score
from ml.findings import KINDS
from ml.incidents import Incident

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ml", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    _cli("simulate", "--days", "2", "--tenants", "4", "--seed", "11", "--max-per-hour", "1000", "--out", str(out))
    return out


def test_simulate_writes_events_and_labels_in_the_documented_format(simulation: Path) -> None:
    lines = (simulation / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines[:2000]]
    assert all(set(r) == {"tenant", "received_at", "event", "signature_valid"} for r in records)
    received = [datetime.fromisoformat(r["received_at"]) for r in records]
    assert received == sorted(received)
    ids = [r["event"]["id"] for r in records]
    assert all(i.startswith("evt_") for i in ids)
    assert len(set(ids)) > 0.95 * len(ids)  # fresh ids, bar the odd provider re-send
    assert {r["event"]["type"] for r in records} >= {"charge.succeeded", "payment_intent.created", "invoice.paid"}
    labels = [json.loads(line) for line in (simulation / "labels.jsonl").read_text().splitlines()]
    assert {label["kind"] for label in labels} == set(KINDS)
    assert all(set(label) == {"tenant", "kind", "start", "end"} and label["start"] < label["end"] for label in labels)


def test_labels_start_at_the_first_request_that_shows_the_incident(simulation: Path) -> None:
    """Not before anything in the stream differs from normal: a silent lapse at its first deleted subscription,
    a probe at its first forged request; a volume drop (an absence) where the traffic stopped."""
    labels = [json.loads(line) for line in (simulation / "labels.jsonl").read_text().splitlines()]
    shown = {(label["tenant"], datetime.fromisoformat(label["start"])) for label in labels if label["kind"] != "volume_drop"}
    requests: dict[tuple[str, datetime], list[dict[str, object]]] = {}
    with (simulation / "events.jsonl").open() as lines:
        for line in lines:
            record = json.loads(line)
            key = (record["tenant"], datetime.fromisoformat(record["received_at"]))
            if key in shown:
                requests.setdefault(key, []).append(record)
    for label in labels:
        at = requests.get((label["tenant"], datetime.fromisoformat(label["start"])), [])
        if label["kind"] == "silent_lapse":
            assert any(r["event"]["type"] == "customer.subscription.deleted" for r in at), label
        elif label["kind"] == "bad_signature":
            assert any(not r["signature_valid"] for r in at), label
        elif label["kind"] == "webhook_lag":
            assert any(datetime.fromisoformat(r["received_at"]).timestamp() - r["event"]["created"] >= 10 for r in at), label
        elif label["kind"] != "volume_drop":
            assert at, label


def test_evaluate_cli_reports_every_kind_and_finds_the_incidents(simulation: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    printed = _cli(
        "evaluate",
        "--events",
        str(simulation / "events.jsonl"),
        "--labels",
        str(simulation / "labels.jsonl"),
        "--detectors",
        "all",
        "--out",
        str(report_path),
    )
    assert "precision" in printed and "card_testing" in printed
    report = json.loads(report_path.read_text())
    assert set(report["overall"]) >= {"precision", "recall", "false_alarms_per_tenant_day"}
    assert set(report["by_kind"]) == set(KINDS)
    assert all(set(row) >= {"recall", "median_windows_to_detect"} for row in report["by_kind"].values())
    assert report["anomalies"] and all(
        set(a) == {"tenant", "kind", "detector", "start", "end", "score"} for a in report["anomalies"]
    )
    assert report["overall"]["recall"] >= 0.6
    assert report["overall"]["precision"] >= 0.4
    assert report["overall"]["false_alarms_per_tenant_day"] <= 1.0


def test_evaluate_accepts_a_hand_written_file_slightly_out_of_order(tmp_path: Path) -> None:
    lines = []
    for minute in range(400):  # a quiet tenant: one customer.updated a minute
        at = T0 + timedelta(minutes=minute, seconds=10)
        lines.append(
            {"tenant": "acme", "received_at": at.isoformat(), "signature_valid": True, "event": _event(f"evt_{minute}", at)}
        )
    probe = T0 + timedelta(minutes=300)
    for n in range(40):
        at = probe + timedelta(seconds=3 * n)
        lines.append(
            {"tenant": "acme", "received_at": at.isoformat(), "signature_valid": False, "event": _event(f"evt_x{n}", at)}
        )
    lines.sort(key=lambda r: r["received_at"])
    lines[10], lines[11] = lines[11], lines[10]  # within the tolerated disorder
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    labels = tmp_path / "labels.jsonl"
    label = {
        "tenant": "acme",
        "kind": "bad_signature",
        "start": probe.isoformat(),
        "end": (probe + timedelta(minutes=2)).isoformat(),
    }
    labels.write_text(json.dumps(label) + "\n")
    report = evaluate(events, labels, "rules")
    assert report["by_kind"]["bad_signature"] == {"incidents": 1, "detected": 1, "recall": 1.0, "median_windows_to_detect": 1}
    assert [a["kind"] for a in report["anomalies"]] == ["bad_signature"]
    assert report["overall"]["precision"] == 1.0


def _event(event_id: str, at: datetime) -> dict[str, object]:
    return {
        "id": event_id,
        "type": "customer.updated",
        "created": int(at.timestamp()) - 1,
        "data": {"object": {"customer": "cus_1"}},
    }


def _incident(tenant: str, kind: str, start_minute: int, end_minute: int) -> Incident:
    start, end = T0 + timedelta(minutes=start_minute), T0 + timedelta(minutes=end_minute)
    return Incident(tenant, kind, kind, "warning", 0.7, start, end, end)


def test_scoring_precision_recall_delay_and_false_alarms() -> None:
    labels = [
        Label("a", "card_testing", T0 + timedelta(minutes=10, seconds=30), T0 + timedelta(minutes=20)),
        Label("a", "volume_drop", T0 + timedelta(minutes=100), T0 + timedelta(minutes=200)),
        Label("b", "webhook_lag", T0 + timedelta(minutes=50), T0 + timedelta(minutes=60)),
    ]
    incidents = [
        _incident("a", "card_testing", 12, 18),  # detected in the third window of the incident
        _incident("a", "failure_spike", 12, 14),  # right time, wrong kind: not correct, not a false alarm
        _incident("a", "volume_drop", 130, 210),
        _incident("b", "webhook_lag", 300, 310),  # long after: false alarm, and the lag is missed
        _incident("c", "bad_signature", 5, 6),  # no incident at this tenant: false alarm
    ]
    report = score(incidents, labels, tenant_days=4.0)
    assert report["overall"]["precision"] == pytest.approx(2 / 5)
    assert report["overall"]["recall"] == pytest.approx(2 / 3)
    assert report["overall"]["false_alarms_per_tenant_day"] == pytest.approx(2 / 4)
    assert report["by_kind"]["card_testing"]["median_windows_to_detect"] == 3
    assert report["by_kind"]["volume_drop"]["median_windows_to_detect"] == 31
    assert report["by_kind"]["webhook_lag"]["recall"] == 0.0
    assert report["by_kind"]["bad_signature"]["recall"] is None  # no such incident labelled
    assert len(report["anomalies"]) == 5
