"""Per-tenant isolation forest over window features, with seasonality, scored without sklearn.

sklearn fits the forest; scoring walks the fitted trees' arrays with numpy, because calling
``score_samples`` costs milliseconds of overhead per call and the online scorer sees one window per
tenant per minute for every tenant. The flattened trees are also what ``dumps`` persists (plain
arrays in an ``.npz``, no pickle), so loading a model needs neither sklearn nor trust in the blob.

Seasonality enters twice: as hour-of-day (sin/cos) and weekend features, and as the window's
volume relative to the tenant's hour-of-day profile (learned from the training history), so a
quiet night is not an anomaly but a quiet afternoon is.

Trees never split on a feature that did not vary in training (a tenant that never saw a bad
signature), so they cannot see an anomaly there. A range guard covers that blind spot: a window
more than ``GUARD`` log-units outside the training range of any count feature (lag excepted)
scores above the threshold, by how far out it is.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ml.baseline import card_excess
from ml.features import Window
from ml.findings import UNUSUAL

MIN_WINDOWS = 1440  # a day of 60 s windows, so every hour of the day has been seen: fewer and the tenant gets rules only
GUARD = 1.5  # log1p units beyond the training range: 0 -> 4 or more, 10 -> 50 or more
# Added to the training-score quantile: at 0.03, ordinary windows a week of training never saw
# crossed it too often (forest alone: precision 0.68 on the held-out simulation, docs/ML.md).
MARGIN = 0.06
_EULER = 0.5772156649015329


def _failure_ratio(window: Window) -> float:
    """Charge failure ratio without card-testing attempts (cards beyond one per customer), which have a feature of their own."""
    excess = card_excess(window)
    charges = window.charge_failed + window.charge_succeeded - excess
    return (window.charge_failed - excess) / charges if charges > 0 else 0.0


@dataclass(frozen=True)
class _Feature:
    name: str  # as shown in explanations
    raw: Callable[[Window], float]
    kind: str  # the incident kind a high value points to
    log: bool = True
    guarded: bool = True  # False: one retried event already lands far outside the range, so it is no evidence


_COUNTS = (
    _Feature("events", lambda w: w.events, UNUSUAL),
    _Feature("charge.failed", lambda w: w.charge_failed - card_excess(w), "failure_spike"),
    _Feature("charge failure ratio", _failure_ratio, "failure_spike", log=False),
    _Feature("failed cards beyond one per customer", card_excess, "card_testing"),
    _Feature("largest refund", lambda w: w.max_refund, "negative_invoice"),
    _Feature("negative amounts", lambda w: w.negative_amount, "negative_invoice"),
    _Feature("lapses", lambda w: w.lapses, "silent_lapse"),
    _Feature("duplicates", lambda w: w.duplicates, "duplicate_flood"),
    _Feature("bad signatures", lambda w: w.bad_signatures, "bad_signature"),
    _Feature("lag p50 (s)", lambda w: w.lag_p50 or 0.0, "webhook_lag", guarded=False),
)
_SEASON = ("hour sin", "hour cos", "weekend", "events vs hour-of-day profile")
FEATURE_NAMES = tuple(f.name for f in _COUNTS) + _SEASON
_GUARDED = np.array([f.guarded for f in _COUNTS])


class TenantModel:
    def __init__(
        self, trees: dict[str, np.ndarray], profile: np.ndarray, mean: np.ndarray, sd: np.ndarray, threshold: float
    ) -> None:
        self._trees = trees  # flattened: left, right, feature, split, value (leaf path length), roots, norm; low, high (ranges)
        self.profile = profile  # expected events per window by hour of day (24) then weekday/weekend factors (2)
        self._mean = mean  # of the raw feature values on the training windows, for explanations
        self._sd = sd
        self.threshold = threshold  # anomaly scores at or above this are findings

    @classmethod
    def fit(
        cls,
        history: Sequence[Window],
        *,
        min_windows: int = MIN_WINDOWS,
        random_state: int = 0,
        quantile: float = 0.9999,
        margin: float = MARGIN,
    ) -> TenantModel | None:
        """Fit on the tenant's trailing windows; None when there are too few for a meaningful model.

        The threshold is a high quantile of the training scores plus a margin: the tenant's own
        history decides what "unusual" is, at roughly one window in ``1 / (1 - quantile)``.
        """
        from sklearn.ensemble import IsolationForest

        if len(history) < min_windows:
            return None
        profile = _profile(history)
        raw = np.array([_raw(w) for w in history], dtype=np.float64)
        matrix = _transform(raw, history, profile)
        forest = IsolationForest(n_estimators=64, max_samples=min(256, len(history)), random_state=random_state).fit(matrix)
        trees = {**_flatten(forest), "low": matrix.min(axis=0), "high": matrix.max(axis=0)}
        scores = _scores(trees, matrix)  # inside the training ranges by construction: no guard
        return cls(trees, profile, raw.mean(axis=0), raw.std(axis=0), float(np.quantile(scores, quantile)) + margin)

    def score(self, window: Window) -> tuple[float, list[str]]:
        """Anomaly score (sklearn's scale: ~0.5 ordinary, towards 1 anomalous) and the features that drove it."""
        raw = np.array([_raw(window)], dtype=np.float64)
        return float(self._score(_transform(raw, [window], self.profile))[0]), self._explain(raw[0], window)

    def kind(self, window: Window) -> str:
        """The incident kind the most deviant feature points to."""
        raw = np.array(_raw(window), dtype=np.float64)
        top = int(np.argmax(np.abs(self._deviation(raw, window))))
        if top == 0 and raw[0] < self._typical(window)[0]:
            return "volume_drop"
        return _COUNTS[top].kind

    def dumps(self) -> bytes:
        buffer = io.BytesIO()
        meta = np.frombuffer(json.dumps({"threshold": self.threshold, "features": FEATURE_NAMES}).encode(), dtype=np.uint8)
        np.savez_compressed(buffer, meta=meta, profile=self.profile, mean=self._mean, sd=self._sd, **self._trees)
        return buffer.getvalue()

    @classmethod
    def loads(cls, blob: bytes) -> TenantModel:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(arrays.pop("meta").tobytes())
        if tuple(meta["features"]) != FEATURE_NAMES:
            raise ValueError("model was trained on a different feature set; retrain it")
        profile, mean, sd = arrays.pop("profile"), arrays.pop("mean"), arrays.pop("sd")
        return cls(arrays, profile, mean, sd, float(meta["threshold"]))

    def score_windows(self, windows: Sequence[Window]) -> np.ndarray:
        """Scores of many windows of this tenant at once (batch replays)."""
        raw = np.array([_raw(w) for w in windows], dtype=np.float64)
        return self._score(_transform(raw, windows, self.profile))

    def _score(self, matrix: np.ndarray) -> np.ndarray:
        """Tree score, raised above the threshold for windows far outside the training ranges (see module docstring)."""
        scores = _scores(self._trees, matrix)
        counts = matrix[:, : len(_COUNTS)][:, _GUARDED]
        high, low = self._trees["high"][: len(_COUNTS)][_GUARDED], self._trees["low"][: len(_COUNTS)][_GUARDED]
        outside = np.maximum(counts - high, low - counts).max(axis=1)
        guarded = self.threshold + 0.01 + 0.05 * (outside - GUARD)
        return np.where(outside >= GUARD, np.maximum(scores, guarded), scores)

    def _typical(self, window: Window) -> np.ndarray:
        """Training means, except that volume is expected from the hour-of-day profile."""
        typical = self._mean.copy()
        typical[0] = self.profile[window.start.hour] * self.profile[24 + (window.start.weekday() >= 5)]
        return typical

    def _deviation(self, raw: np.ndarray, window: Window) -> np.ndarray:
        """Standardised distance from typical; the floor keeps near-constant features from dominating."""
        return (raw - self._typical(window)) / np.maximum(self._sd, 0.5 + 0.1 * np.abs(self._mean))

    def _explain(self, raw: np.ndarray, window: Window) -> list[str]:
        typical = self._typical(window)
        order = np.argsort(-np.abs(self._deviation(raw, window)))[:3]
        return [f"{_COUNTS[i].name} {_fmt(raw[i])} vs typical {_fmt(typical[i])}±{_fmt(self._sd[i])}" for i in order]


def score_many(models: Mapping[str, TenantModel], windows: Sequence[Window]) -> dict[str, tuple[float, list[str]]]:
    """Score one window per tenant (tenants without a model are skipped): the online per-minute batch."""
    return {w.tenant: models[w.tenant].score(w) for w in windows if w.tenant in models}


def _raw(window: Window) -> list[float]:
    return [float(f.raw(window)) for f in _COUNTS]


def _transform(raw: np.ndarray, windows: Sequence[Window], profile: np.ndarray) -> np.ndarray:
    """Model inputs: log counts, then the seasonality columns."""
    logs = np.array([f.log for f in _COUNTS])
    counts = np.where(logs, np.log1p(raw), raw)
    hours = np.array([w.start.hour + w.start.minute / 60 for w in windows])
    weekend = np.array([float(w.start.weekday() >= 5) for w in windows])
    expected = profile[hours.astype(int)] * profile[24 + weekend.astype(int)]
    angle = 2 * math.pi * hours / 24
    season = np.column_stack([np.sin(angle), np.cos(angle), weekend, counts[:, 0] - np.log1p(expected)])
    return np.hstack([counts, season])


def _profile(history: Sequence[Window]) -> np.ndarray:
    """Mean events per window by hour of day, and weekday/weekend multipliers (1 when a day type is unseen)."""
    events = np.array([w.events for w in history], dtype=np.float64)
    hours = np.array([w.start.hour for w in history])
    weekend = np.array([w.start.weekday() >= 5 for w in history])
    overall = events.mean()
    by_hour = np.array([events[hours == h].mean() if (hours == h).any() else overall for h in range(24)])
    factors = [1.0, 1.0]
    if weekend.any() and (~weekend).any() and overall > 0:
        factors = [events[~weekend].mean() / overall, events[weekend].mean() / overall]
    return np.concatenate([by_hour, factors])


def _path_length(n: np.ndarray) -> np.ndarray:
    """Average path length of an unsuccessful BST search among n points (the isolation forest normaliser)."""
    n = np.asarray(n, dtype=np.float64)
    safe = np.maximum(n, 3)
    value = 2.0 * (np.log(safe - 1.0) + _EULER) - 2.0 * (safe - 1.0) / safe
    return np.where(n <= 1, 0.0, np.where(n == 2, 1.0, value))


def _flatten(forest: object) -> dict[str, np.ndarray]:
    """Concatenate the fitted trees into flat arrays; a leaf's value is its depth plus the expected rest of the path."""
    lefts, rights, features, splits, values, roots = [], [], [], [], [], []
    offset = 0
    for estimator in forest.estimators_:  # type: ignore[attr-defined]
        tree = estimator.tree_
        depth = np.zeros(tree.node_count)
        for node in range(tree.node_count):  # children always follow their parent
            for child in (tree.children_left[node], tree.children_right[node]):
                if child >= 0:
                    depth[child] = depth[node] + 1
        leaf = tree.children_left < 0
        lefts.append(np.where(leaf, -1, tree.children_left + offset))
        rights.append(np.where(leaf, -1, tree.children_right + offset))
        features.append(np.where(leaf, -1, tree.feature))
        splits.append(tree.threshold)
        values.append(np.where(leaf, depth + _path_length(tree.n_node_samples), 0.0))
        roots.append(offset)
        offset += tree.node_count
    norm = _path_length(np.array([forest.max_samples_]))  # type: ignore[attr-defined]
    return {
        "left": np.concatenate(lefts).astype(np.int32),
        "right": np.concatenate(rights).astype(np.int32),
        "feature": np.concatenate(features).astype(np.int32),
        "split": np.concatenate(splits),
        "value": np.concatenate(values),
        "roots": np.array(roots, dtype=np.int32),
        "norm": norm,
    }


def _scores(trees: Mapping[str, np.ndarray], matrix: np.ndarray) -> np.ndarray:
    """sklearn's ``-score_samples``: walk every tree level by level for all rows at once."""
    x = matrix.astype(np.float32).astype(np.float64)  # sklearn compares float32 inputs with float64 splits
    node = np.broadcast_to(trees["roots"], (len(x), len(trees["roots"]))).copy()
    rows = np.arange(len(x))[:, None]
    feature = trees["feature"]
    while True:
        at = feature[node]
        inner = at >= 0
        if not inner.any():
            break
        go_left = x[rows, np.where(inner, at, 0)] <= trees["split"][node]
        node = np.where(inner, np.where(go_left, trees["left"][node], trees["right"][node]), node)
    return 2.0 ** (-trees["value"][node].mean(axis=1) / trees["norm"][0])


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2f}"
