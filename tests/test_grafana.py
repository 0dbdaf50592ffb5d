"""The Grafana dashboard and the Prometheus alert rules (deploy/grafana) query only metrics and
labels the code really exports, are well-formed, and are documented in docs/OBSERVABILITY.md:
a renamed metric or label breaks this test instead of silently emptying a panel or an alert."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from litestar.testing import TestClient
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

import gateway.metrics  # noqa: F401  (registers the hookgate_* metrics on the default registry)
from gateway.app import create_app
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "hookgate.json"
ALERTS = ROOT / "deploy" / "grafana" / "alerts.yaml"
DOCS = ROOT / "docs" / "OBSERVABILITY.md"

# Series Prometheus itself makes (not the app), and the target labels it attaches to every series.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}

# PromQL functions and aggregation operators (https://prometheus.io/docs/prometheus/latest/querying/).
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count", "count_over_time", "count_values", "day_of_month", "day_of_week", "delta", "deriv", "exp",
    "floor", "group", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log10", "log2", "max", "max_over_time", "min", "min_over_time",
    "minute", "month", "predict_linear", "present_over_time", "quantile", "quantile_over_time", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar", "stdvar_over_time",
    "sum", "sum_over_time", "time", "timestamp", "topk", "vector", "year",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")


@dataclass
class Usage:
    """What one PromQL expression refers to."""

    metrics: set[str]
    matchers: list[tuple[str, str]]  # (metric, label) for every `metric{label=...}`
    grouping: set[str]  # labels in by/without/on/ignoring/group_* lists
    unknown_functions: set[str]


def parse_promql(expr: str) -> Usage:
    """A small, deliberately strict PromQL scanner: it removes strings, ranges and Grafana variables,
    takes label names from selectors and grouping clauses, and calls every remaining identifier a
    metric unless it is a keyword or a known function (called with parentheses)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # $__rate_interval, ${datasource}
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows: [5m], [1h:5m]
    matchers: list[tuple[str, str]] = []

    def selector(match: re.Match[str]) -> str:
        metric = match.group(1) or ""
        matchers.extend((metric, label) for label in _MATCHER_LABEL.findall(match.group(2)))
        return f" {metric} "

    text = _SELECTOR.sub(selector, text)
    grouping: set[str] = set()
    for match in _GROUPING.finditer(text):
        grouping.update(label.strip() for label in match.group(1).split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    metrics, unknown = set(), set()
    for name, call in _IDENTIFIER.findall(text):
        if call:
            if name not in FUNCTIONS:
                unknown.add(name)
        elif name not in KEYWORDS and name not in FUNCTIONS:  # `sum by (x) (...)`: an operator without `(` next
            metrics.add(name)
    return Usage(metrics, matchers, grouping, unknown)


def test_the_scanner_finds_metrics_and_labels() -> None:
    usage = parse_promql(
        'histogram_quantile(0.99, sum by (path, le) (rate(a_bucket{status_code=~"5..|x"}[$__rate_interval])))'
        ' / ignoring(x) b_total offset 5m or vector(0) > bool 1 and absent(up{job="w"})'
    )
    assert usage.metrics == {"a_bucket", "b_total", "up"}
    assert usage.matchers == [("a_bucket", "status_code"), ("up", "job")]
    assert usage.grouping == {"path", "le", "x"}
    assert parse_promql("rat(a[5m])").unknown_functions == {"rat"}


# --- what the code exports -----------------------------------------------------------------------------


def _series_names(family_name: str, family_type: str) -> list[str]:
    """The series names a family is scraped as (families without children show only # TYPE lines)."""
    if family_type == "counter":
        return [family_name.removesuffix("_total") + "_total"]
    if family_type == "histogram":
        return [family_name + suffix for suffix in ("_bucket", "_sum", "_count")]
    if family_type == "summary":
        return [family_name, family_name + "_sum", family_name + "_count"]
    return [family_name]


def _label_names() -> dict[str, set[str]]:
    """Declared label names per family; read from the registered collectors because a labelled metric
    without children exposes no sample, hence no labels, in the text format."""
    labels: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001  (no public accessor)
        if isinstance(collector, MetricWrapperBase):
            labels[collector._name] = set(collector._labelnames)  # noqa: SLF001
    return labels


def parse_exposition(text: str) -> dict[str, set[str]]:
    """Every series name Prometheus would scrape from this text → the label names it can carry."""
    declared = _label_names()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = declared.get(family.name, set()) | {label for s in family.samples for label in s.labels}
        for name in _series_names(family.name, family.type):
            series.setdefault(name, set()).update(labels | ({"le"} if name.endswith("_bucket") else set()))
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real app's /metrics after it served one request (so Litestar's middleware has created the
    hookgate_request* metrics). Production mode: no background task starts and nothing connects.
    Single-process mode, so every declared family is listed even before its first observation."""
    database = tmp_path_factory.mktemp("grafana") / "unused.db"
    settings = Settings(mode="production", database_url=f"sqlite+aiosqlite:///{database}", secret_key="k" * 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
            response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


@pytest.fixture(scope="module")
def exposition(scraped: str) -> dict[str, set[str]]:
    return parse_exposition(scraped)


def test_the_app_counts_requests_per_route_template(scraped: str) -> None:
    """The API panels group by `path`: it must be the route template, from Litestar's middleware."""
    samples = [s for f in text_string_to_metric_families(scraped) if f.name == "hookgate_requests" for s in f.samples]
    assert any(s.labels.get("path") == "/healthz" and s.labels.get("status_code") == "200" for s in samples)
    series = parse_exposition(scraped)
    for name in ("hookgate_request_duration_seconds_bucket", "hookgate_requests_in_progress"):
        assert {"path", "status_code", "method", "app_name"} <= series.get(name, set()), name


# --- the artefacts -------------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    return _dashboard()["panels"]


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every rule."""
    for panel in _panels():
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for rule in _rules():
        yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def test_every_queried_metric_and_label_is_exported(exposition: dict[str, set[str]]) -> None:
    known = {**exposition, **PROMETHEUS_SERIES}
    problems, seen = [], set()
    for where, expr in _queries():
        usage = parse_promql(expr)
        seen |= usage.metrics
        problems += [f"{where}: unknown function {name}" for name in usage.unknown_functions]
        problems += [f"{where}: no such series {name}" for name in usage.metrics - known.keys()]
        problems += [
            f"{where}: {metric} has no label {label}"
            for metric, label in usage.matchers
            if metric in known and label not in known[metric] | TARGET_LABELS
        ]
        offered = set().union(*(known.get(name, set()) for name in usage.metrics)) | TARGET_LABELS
        problems += [f"{where}: no queried series has label {label}" for label in usage.grouping - offered]
        if not usage.metrics:
            problems.append(f"{where}: queries no metric")
    assert not problems, "\n".join(problems)
    assert {"hookgate_ingest_requests_total", "hookgate_requests_total", "up"} <= seen  # the scan found them


def test_the_name_check_tells_counters_and_histograms_apart(exposition: dict[str, set[str]]) -> None:
    """Counters are scraped with `_total`, histograms as `_bucket/_sum/_count`: the bare names must not pass."""
    assert "hookgate_ingest_requests_total" in exposition
    assert "hookgate_ingest_requests" not in exposition
    assert "hookgate_ingest_duration_seconds_bucket" in exposition
    assert "hookgate_ingest_duration_seconds" not in exposition
    assert parse_promql("rate(hookgate_ingest_requests[5m])").metrics - exposition.keys()


def test_dashboard_is_importable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "hookgate" and dashboard["title"] == "Hookgate"
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique (the docs table is keyed by them)"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no target"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_alert_has_for_severity_and_summary() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{rule['alert']}: `for` missing or malformed"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, rule["alert"]
        assert rule.get("annotations", {}).get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]


def _cell(text: str) -> str:
    """How a value is written in a Markdown table cell of the docs (pipes escaped, one line)."""
    return " ".join(text.split()).replace("|", "\\|")


def test_docs_list_every_panel_and_alert() -> None:
    docs = DOCS.read_text()
    missing = [f"panel {p['title']}" for p in _panels() if f"| {_cell(p['title'])} |" not in docs]
    missing += [f"query of {where}: {expr}" for where, expr in _queries() if f"`{_cell(expr)}`" not in docs]
    missing += [f"alert {r['alert']}" for r in _rules() if f"| {r['alert']} |" not in docs]
    assert not missing, "docs/OBSERVABILITY.md is missing:\n" + "\n".join(missing)
