"""Incident dedup: one ongoing problem is one anomaly, opened, updated, then closed after quiet windows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gateway.settings import Settings
from ml.features import Window
from ml.findings import Finding
from ml.incidents import QUIET_WINDOWS, fold

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)


def _window(minute: int) -> Window:
    return Window("t", T0 + timedelta(minutes=minute), 60)


def _finding(score: float, severity: str = "warning", detector: str = "card_testing", note: str = "") -> Finding:
    return Finding(detector, "card_testing", severity, score, [f"cards {note}"], {"failed_cards": score})


def test_open_update_and_close_after_quiet_windows() -> None:
    incident, change = fold(None, _finding(0.6, note="a"), _window(0))
    assert change == "opened" and incident is not None
    assert (incident.start, incident.last_seen, incident.end) == (T0, T0 + timedelta(minutes=1), None)

    incident, change = fold(incident, _finding(0.9, "critical", note="b"), _window(1))
    assert change == "updated" and incident is not None
    assert (incident.score, incident.severity, incident.explanation) == (0.9, "critical", ["cards b"])

    incident, change = fold(incident, _finding(0.7, "warning", note="c"), _window(2))
    assert (incident.score, incident.severity, incident.explanation) == (0.9, "critical", ["cards c"])  # max, max, latest

    changes = []
    for minute in range(3, 3 + QUIET_WINDOWS):
        incident, change = fold(incident, None, _window(minute))
        changes.append(change)
    assert changes == ["unchanged"] * (QUIET_WINDOWS - 1) + ["closed"]
    assert incident is not None and incident.end == T0 + timedelta(minutes=3) and incident.start == T0


def test_a_finding_within_the_quiet_period_keeps_the_incident_open() -> None:
    incident, _ = fold(None, _finding(0.6), _window(0))
    for minute in range(1, QUIET_WINDOWS):
        incident, change = fold(incident, None, _window(minute))
        assert change == "unchanged"
    incident, change = fold(incident, _finding(0.6), _window(QUIET_WINDOWS))
    assert change == "updated" and incident is not None and incident.start == T0 and incident.end is None


def test_after_closing_a_new_finding_opens_a_new_incident() -> None:
    incident, _ = fold(None, _finding(0.6), _window(0))
    for minute in range(1, QUIET_WINDOWS + 1):
        incident, _ = fold(incident, None, _window(minute))
    assert incident is not None and incident.end is not None
    later = QUIET_WINDOWS + 5
    reopened, change = fold(incident, _finding(0.5), _window(later))
    assert change == "opened" and reopened is not None and reopened.start == T0 + timedelta(minutes=later) and reopened.end is None
    assert fold(None, None, _window(later + 1)) == (None, "unchanged")


def test_the_evaluator_and_the_online_monitor_close_incidents_alike() -> None:
    """``hookgate ml evaluate`` folds with ``fold``'s default, the monitor with the setting: what
    the evaluation measures is what a tenant gets unless it is set otherwise."""
    assert Settings().anomaly_quiet_windows == QUIET_WINDOWS


def test_detectors_agreeing_on_a_kind_share_the_incident() -> None:
    incident, _ = fold(None, _finding(0.6), _window(0))
    incident, _ = fold(incident, _finding(0.8, detector="isolation_forest"), _window(1))
    incident, _ = fold(incident, _finding(0.8, detector="isolation_forest"), _window(2))
    assert incident is not None and incident.detector == "card_testing+isolation_forest"
