"""CPU cost of scoring one window for every tenant: the online detector's per-minute work.

Fits ``--models`` distinct tenant models on two days of simulated windows each, loads them (via
``dumps``/``loads``, as the online path does) as ``--tenants`` independent models, then measures
process CPU time for: the forest alone (``forest.score_many``, the batch path), sklearn's own
``score_samples`` called once per tenant (the path it replaces), and full ``detect()`` per tenant
with a week of history (rules + forest, baseline cached as the evaluator does, and recomputed).
Writes ``bench/results/ml_scoring.json``.

Run: ``.venv/bin/python -m bench.ml_scoring [--tenants 1000] [--repeat 5]`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest

from ml.baseline import Baseline
from ml.detection import detect
from ml.features import Window
from ml.forest import TenantModel, _raw, _transform, score_many
from ml.rules import Thresholds

RESULTS = Path(__file__).with_name("results")
T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)


def _history(seed: int, minutes: int) -> list[Window]:
    rng = np.random.default_rng(seed)
    rate = float(np.exp(rng.uniform(np.log(0.2), np.log(170))))
    windows = []
    for m in range(minutes):
        level = rate * (0.3 + 0.7 * (1 - np.cos(2 * np.pi * m / 1440)) / 2)
        charges = int(rng.poisson(level * 0.15))
        failed = int(rng.binomial(charges, 0.04))
        events = int(rng.poisson(level))
        windows.append(
            Window(
                f"t{seed}",
                T0 + timedelta(minutes=m),
                60,
                events=events,
                charge_failed=failed,
                charge_succeeded=charges - failed,
                failed_customers=failed,
                failed_cards=failed,
                duplicates=int(rng.random() < 0.003 * level),
                lag_p50=float(rng.uniform(0.5, 2)) if events else None,
                lag_max=float(rng.uniform(2, 5)) if events else None,
            )
        )
    return windows


def _cpu(run: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "max_s": max(times), "runs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--models", type=int, default=20, help="distinct fitted models, reused across tenants")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    histories = [_history(seed, 7 * 1440) for seed in range(args.models)]
    blobs = [TenantModel.fit(h[-2 * 1440 :], random_state=seed).dumps() for seed, h in enumerate(histories)]  # type: ignore[union-attr]
    tenants = [f"tenant-{i:04d}" for i in range(args.tenants)]
    models = {name: TenantModel.loads(blobs[i % args.models]) for i, name in enumerate(tenants)}
    history = {name: [replace(w, tenant=name) for w in histories[i % args.models]] for i, name in enumerate(tenants)}
    windows = [replace(history[name][-1], tenant=name, start=history[name][-1].start + timedelta(minutes=1)) for name in tenants]
    thresholds = Thresholds()
    baselines = {w.tenant: Baseline.from_history(history[w.tenant], w.start) for w in windows}

    sklearn_forests = []
    for seed, h in enumerate(histories[: min(args.models, 5)]):
        matrix = _transform(np.array([_raw(w) for w in h[-2880:]]), h[-2880:], models[tenants[seed]].profile)
        sklearn_forests.append(IsolationForest(n_estimators=64, max_samples=256, random_state=seed).fit(matrix))

    def sklearn_per_tenant() -> None:
        for i, window in enumerate(windows):
            model = models[window.tenant]
            sklearn_forests[i % len(sklearn_forests)].score_samples(_transform(np.array([_raw(window)]), [window], model.profile))

    results = {
        "tenants": args.tenants,
        "forest_score_many": _summary(_cpu(lambda: score_many(models, windows), args.repeat)),
        "sklearn_score_samples_per_tenant": _summary(_cpu(sklearn_per_tenant, max(1, args.repeat // 2))),
        "detect_cached_baseline": _summary(
            _cpu(
                lambda: [
                    detect(w, history[w.tenant], thresholds, models[w.tenant], baseline=baselines[w.tenant]) for w in windows
                ],
                args.repeat,
            )
        ),
        "detect_recomputed_baseline": _summary(
            _cpu(lambda: [detect(w, history[w.tenant], thresholds, models[w.tenant]) for w in windows], max(1, args.repeat // 2))
        ),
        "history_windows_per_tenant": len(histories[0]),
        "cpu": "process CPU time (time.process_time), one process",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ml_scoring.json").write_text(json.dumps(results, indent=1) + "\n")
    for name, value in results.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
