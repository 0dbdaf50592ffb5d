"""Replay an events file through the production feature and detection code and score it against labels.

The clock is the events' ``received_at``: windows close as the replay passes them, models are
(re)fitted on each tenant's trailing windows once a day, and incidents are folded exactly as the
online path folds them. Scoring: an anomaly is correct when it overlaps a labelled incident of the
same tenant and kind (allowing ``GRACE_WINDOWS`` after its end, for detectors that need several
windows of evidence); a false alarm when it overlaps no labelled incident of that tenant at all.
"""

from __future__ import annotations

import heapq
import json
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from ml.baseline import Baseline, refresh_block, windows_before
from ml.detection import detect
from ml.features import Window
from ml.findings import KINDS
from ml.forest import MIN_WINDOWS, TenantModel
from ml.incidents import Incident, fold
from ml.rules import Thresholds
from ml.windows import WindowBuilder

DETECTORS = ("rules", "forest", "all")
GRACE_WINDOWS = 10
HISTORY_WINDOWS = 7 * 1440  # what the online path keeps: a week of 60 s windows
_REFIT_EVERY = 1440  # windows between model refits: daily
_REORDER_SECONDS = 300  # how far out of received order a file may be


@dataclass(frozen=True)
class Label:
    tenant: str
    kind: str
    start: datetime
    end: datetime


@dataclass
class _TenantState:
    history: list[Window] = field(default_factory=list)
    baseline: Baseline | None = None
    block: datetime | None = None  # the refresh block the baseline is of
    model: TenantModel | None = None
    fitted_at: int = 0  # `seen` at the last fit
    seen: int = 0  # windows closed so far
    covered: float = 0.0  # seconds of windows closed so far
    open: dict[str, Incident] = field(default_factory=dict)


class Replay:
    """Feeds closed windows through detection and incident dedup, per tenant, like the online worker."""

    def __init__(self, detectors: str = "all", thresholds: Thresholds | None = None, seed: int = 0) -> None:
        if detectors not in DETECTORS:
            raise ValueError(f"detectors must be one of {DETECTORS}")
        self.detectors = detectors
        self.thresholds = thresholds or Thresholds()
        self.seed = seed
        self.incidents: list[Incident] = []
        self._tenants: dict[str, _TenantState] = {}

    def window(self, window: Window) -> None:
        state = self._tenants.setdefault(window.tenant, _TenantState())
        block = refresh_block(window.start, window.seconds)  # as the online monitor does
        if state.baseline is None or state.block != block:
            state.baseline = Baseline.from_history(windows_before(state.history, block), block, self.thresholds.card_testing_cards_per_customer)
            state.block = block
        if self.detectors != "rules" and state.seen - state.fitted_at >= (_REFIT_EVERY if state.model else MIN_WINDOWS):
            state.model = TenantModel.fit(state.history, random_state=self.seed) or state.model
            state.fitted_at = state.seen
        model = None if self.detectors == "rules" else state.model
        findings = detect(
            window, state.history, self.thresholds, model, baseline=state.baseline, rules=self.detectors != "forest"
        )
        by_kind = {f.kind: f for f in findings}
        for kind in set(by_kind) | set(state.open):
            incident, change = fold(state.open.get(kind), by_kind.get(kind), window)
            if change == "closed":
                self.incidents.append(incident)  # type: ignore[arg-type]
                del state.open[kind]
            elif incident is not None:
                state.open[kind] = incident
        state.history.append(window)
        state.seen += 1
        state.covered += window.seconds
        if len(state.history) > 2 * HISTORY_WINDOWS:
            del state.history[:-HISTORY_WINDOWS]

    def finish(self) -> list[Incident]:
        for state in self._tenants.values():
            self.incidents.extend(incident for incident in state.open.values())
            state.open.clear()
        self.incidents.sort(key=lambda i: (i.start, i.tenant, i.kind))
        return self.incidents

    @property
    def tenant_days(self) -> float:
        return sum(state.covered for state in self._tenants.values()) / 86400


def read_events(path: Path) -> Iterator[tuple[str, datetime, dict[str, Any], bool]]:
    """Lines of an events file in received order, tolerating small disorder (``_REORDER_SECONDS``)."""
    decoder = msgspec.json.Decoder()
    heap: list[tuple[datetime, int, str, dict[str, Any], bool]] = []
    released: datetime | None = None
    with path.open("rb") as lines:
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            record = decoder.decode(line)
            received = datetime.fromisoformat(record["received_at"])
            if released is not None and received < released:
                raise ValueError(
                    f"{path}:{number + 1}: more than {_REORDER_SECONDS} s out of received order; sort the file by received_at"
                )
            heapq.heappush(heap, (received, number, record["tenant"], record["event"], bool(record.get("signature_valid", True))))
            while heap[0][0] <= received - timedelta(seconds=_REORDER_SECONDS):
                released, _, tenant, event, valid = heapq.heappop(heap)
                yield tenant, released, event, valid
    while heap:
        received, _, tenant, event, valid = heapq.heappop(heap)
        yield tenant, received, event, valid


def read_labels(path: Path) -> list[Label]:
    labels = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            labels.append(
                Label(
                    record["tenant"],
                    record["kind"],
                    datetime.fromisoformat(record["start"]),
                    datetime.fromisoformat(record["end"]),
                )
            )
    return labels


def replay(events: Iterable[tuple[str, datetime, dict[str, Any], bool]], detectors: str = "all") -> tuple[list[Incident], float]:
    """Run events through windows, detection and dedup; returns the incidents and the tenant-days replayed."""
    builder = WindowBuilder()
    runner = Replay(detectors)
    for tenant, received, event, valid in events:
        for window in builder.add(tenant, received, event, valid):
            runner.window(window)
    for window in builder.flush():
        runner.window(window)
    return runner.finish(), runner.tenant_days


def score(incidents: list[Incident], labels: list[Label], tenant_days: float, seconds: int = 60) -> dict[str, Any]:
    """Precision, recall, windows-to-detect and false alarms per tenant-day; see the module docstring."""
    grace = timedelta(seconds=GRACE_WINDOWS * seconds)
    step = timedelta(seconds=seconds)

    def overlaps(incident: Incident, label: Label) -> bool:
        end = incident.end or incident.last_seen
        return incident.tenant == label.tenant and incident.start <= label.end + grace and end >= label.start

    correct = [i for i in incidents if any(i.kind == label.kind and overlaps(i, label) for label in labels)]
    false_alarms = [i for i in incidents if not any(overlaps(i, label) for label in labels)]
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        delays = []
        kind_labels = [label for label in labels if label.kind == kind]
        for label in kind_labels:
            starts = [i.start for i in incidents if i.kind == kind and overlaps(i, label)]
            if starts:
                first_window = label.start - timedelta(seconds=label.start.timestamp() % seconds)
                delays.append(max(1, (min(starts) - first_window) // step + 1))
        by_kind[kind] = {
            "incidents": len(kind_labels),
            "detected": len(delays),
            "recall": len(delays) / len(kind_labels) if kind_labels else None,
            "median_windows_to_detect": statistics.median(delays) if delays else None,
        }
    detected = sum(k["detected"] for k in by_kind.values())
    return {
        "overall": {
            "precision": len(correct) / len(incidents) if incidents else None,
            "recall": detected / len(labels) if labels else None,
            "false_alarms_per_tenant_day": len(false_alarms) / tenant_days if tenant_days else None,
            "anomalies": len(incidents),
            "false_alarms": len(false_alarms),
            "tenant_days": tenant_days,
        },
        "by_kind": by_kind,
        "anomalies": [
            {
                "tenant": i.tenant,
                "kind": i.kind,
                "detector": i.detector,
                "start": i.start.isoformat(),
                "end": (i.end or i.last_seen).isoformat(),
                "score": round(i.score, 4),
            }
            for i in incidents
        ],
    }


def evaluate(events: Path, labels: Path, detectors: str = "all") -> dict[str, Any]:
    incidents, tenant_days = replay(read_events(events), detectors)
    report = score(incidents, read_labels(labels), tenant_days)
    report["detectors"] = detectors
    return report


def format_report(report: dict[str, Any]) -> str:
    def num(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    overall = report["overall"]
    lines = [
        f"detectors: {report['detectors']}",
        f"{'kind':<18}{'incidents':>10}{'recall':>8}{'median windows':>16}",
    ]
    for kind, row in report["by_kind"].items():
        lines.append(f"{kind:<18}{row['incidents']:>10}{num(row['recall']):>8}{num(row['median_windows_to_detect'], 1):>16}")
    lines.append(
        f"overall: precision {num(overall['precision'])}  recall {num(overall['recall'])}  "
        f"false alarms/tenant-day {num(overall['false_alarms_per_tenant_day'], 3)}  "
        f"({overall['anomalies']} anomalies, {overall['false_alarms']} false alarms, {overall['tenant_days']:.1f} tenant-days)"
    )
    return "\n".join(lines)
