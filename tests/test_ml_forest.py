"""TenantModel: numpy scoring must equal sklearn's, persistence must round-trip, and the obvious must stand out."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from ml.detection import detect
from ml.features import Window
from ml.forest import MARGIN, MIN_WINDOWS, TenantModel, _flatten, _raw, _scores, _transform, score_many
from ml.rules import Thresholds

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)


def _history(tenant: str = "t", minutes: int = 2 * 1440, seed: int = 0) -> list[Window]:
    """Two days of ordinary traffic with a daily curve."""
    rng = np.random.default_rng(seed)
    windows = []
    for m in range(minutes):
        rate = 20 * (0.3 + 0.7 * (1 - np.cos(2 * np.pi * m / 1440)) / 2)
        charges = int(rng.poisson(rate * 0.15))
        failed = int(rng.binomial(charges, 0.04))
        windows.append(
            Window(
                tenant,
                T0 + timedelta(minutes=m),
                60,
                events=int(rng.poisson(rate)),
                charge_failed=failed,
                charge_succeeded=charges - failed,
                failed_customers=failed,
                failed_cards=failed,
                duplicates=int(rng.random() < 0.05),
                lag_p50=float(rng.uniform(0.5, 2)),
                lag_max=float(rng.uniform(2, 5)),
            )
        )
    return windows


@pytest.fixture(scope="module")
def history() -> list[Window]:
    return _history()


@pytest.fixture(scope="module")
def model(history: list[Window]) -> TenantModel:
    fitted = TenantModel.fit(history)
    assert fitted is not None
    return fitted


def test_numpy_scoring_equals_sklearn(history: list[Window], model: TenantModel) -> None:
    matrix = _transform(np.array([_raw(w) for w in history]), history, model.profile)
    forest = IsolationForest(n_estimators=64, max_samples=256, random_state=3).fit(matrix)
    np.testing.assert_allclose(_scores(_flatten(forest), matrix), -forest.score_samples(matrix), rtol=1e-12)


def test_too_little_history_means_no_model(history: list[Window]) -> None:
    assert TenantModel.fit(history[: MIN_WINDOWS - 1]) is None


def test_threshold_is_the_training_quantile_plus_the_margin(history: list[Window], model: TenantModel) -> None:
    training = model.score_windows(history)
    assert model.threshold == pytest.approx(float(np.quantile(training, 0.9999)) + MARGIN)
    assert int((training >= model.threshold).sum()) == 0  # no training window is an alarm


def test_two_declines_and_a_resend_are_no_alarm(history: list[Window], model: TenantModel) -> None:
    """Ordinary bad luck in one window; the former margin (0.03) raised it as a failure spike."""
    ordinary = replace(history[-1440 + 720], start=history[-1].start + timedelta(minutes=1))
    unlucky = replace(ordinary, charge_failed=2, charge_succeeded=0, failed_cards=2, failed_customers=2, duplicates=1)
    assert detect(unlucky, history, Thresholds(), model, rules=False) == []
    narrow = TenantModel.fit(history, margin=0.03)
    assert narrow is not None and model.threshold - narrow.threshold == pytest.approx(MARGIN - 0.03)
    (finding,) = detect(unlucky, history, Thresholds(), narrow, rules=False)
    assert finding.kind == "failure_spike"


def test_training_is_deterministic(history: list[Window], model: TenantModel) -> None:
    again = TenantModel.fit(history)
    assert again is not None and again.threshold == model.threshold
    assert np.array_equal(again.score_windows(history[:50]), model.score_windows(history[:50]))


def test_card_testing_window_stands_out_and_is_explained(history: list[Window], model: TenantModel) -> None:
    ordinary = replace(history[-1440 + 720], start=history[-1].start + timedelta(minutes=1))
    burst = replace(ordinary, events=80, charge_failed=60, failed_cards=60, failed_customers=1)
    normal_score, _ = model.score(ordinary)
    score, explanation = model.score(burst)
    assert normal_score < model.threshold <= score
    assert model.kind(burst) == "card_testing"
    assert explanation[0].startswith("failed cards beyond one per customer 59 vs typical 0")
    (finding,) = detect(burst, history, Thresholds(), model, rules=False)
    assert finding.detector == "isolation_forest" and finding.kind == "card_testing" and finding.score == score


def test_forest_amount_alarms_yield_to_the_rule(history: list[Window], model: TenantModel) -> None:
    """A refund 4.8x anything seen: outside the forest's range, under the rule's 10x p90 limit and,
    without amount history, under its floor. The forest alone names it; with the rules, the rule decides."""
    refunds = [replace(w, refunds=1, max_refund=1000, negative_amount=1000) if i % 100 == 0 else w for i, w in enumerate(history)]
    with_refunds = TenantModel.fit(refunds)
    assert with_refunds is not None
    ordinary = replace(history[-1440 + 720], start=history[-1].start + timedelta(minutes=1))
    refund = replace(ordinary, refunds=1, max_refund=4800, negative_amount=4800)
    (alone,) = detect(refund, refunds, Thresholds(), with_refunds, rules=False)
    assert alone.kind == "negative_invoice"
    assert detect(refund, refunds, Thresholds(), with_refunds) == []
    (no_history,) = detect(refund, history, Thresholds(), model, rules=False)
    assert no_history.detector == "isolation_forest" and no_history.kind == "negative_invoice"
    assert detect(refund, history, Thresholds(), model) == []  # no amount history: the rule's floor decides
    over_the_floor = replace(refund, max_refund=60_000, negative_amount=60_000)
    assert [f.detector for f in detect(over_the_floor, history, Thresholds(), model)] == ["negative_invoice"]


def test_quiet_afternoon_points_to_volume_drop(history: list[Window], model: TenantModel) -> None:
    afternoon = next(w for w in reversed(history) if w.start.hour == 12)
    silent = replace(
        afternoon, events=0, charge_succeeded=0, charge_failed=0, failed_cards=0, failed_customers=0, lag_p50=None, lag_max=None
    )
    assert model.kind(silent) == "volume_drop"


def test_false_alarm_rate_on_fresh_ordinary_traffic(model: TenantModel) -> None:
    fresh = _history(minutes=1440, seed=7)
    flagged = int((model.score_windows(fresh) >= model.threshold).sum())
    assert flagged <= 3  # of 1,440 windows


def test_dumps_loads_round_trip(history: list[Window], model: TenantModel) -> None:
    loaded = TenantModel.loads(model.dumps())
    assert loaded.threshold == model.threshold
    assert np.array_equal(loaded.score_windows(history[-100:]), model.score_windows(history[-100:]))
    assert loaded.score(history[-1]) == model.score(history[-1])


def test_score_many_scores_each_tenant_with_its_own_model(model: TenantModel) -> None:
    other = TenantModel.fit(_history("u", seed=1))
    assert other is not None
    window_t = replace(_history(minutes=1)[0], tenant="t")
    window_u = replace(window_t, tenant="u")
    window_v = replace(window_t, tenant="v")
    scores = score_many({"t": model, "u": other}, [window_t, window_u, window_v])
    assert set(scores) == {"t", "u"}
    assert scores["t"] == model.score(window_t) and scores["u"] == other.score(window_u)
