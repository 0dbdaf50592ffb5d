"""What a PromQL expression refers to, and what the app's /metrics really exports: shared by the
checks of the Grafana dashboard and alert rules (tests/test_grafana.py) and of the Helm chart's
PrometheusRule (tests/test_helm_chart.py), so every shipped query is held to one standard."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from litestar.testing import TestClient
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

import gateway.metrics  # noqa: F401  (registers the hookgate_* metrics on the default registry)
from gateway.app import create_app
from gateway.settings import Settings

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


def problems_in(where: str, expr: str, known: dict[str, set[str]]) -> list[str]:
    """Everything ``expr`` refers to that ``known`` (series name → label names) does not export."""
    usage = parse_promql(expr)
    problems = [f"{where}: unknown function {name}" for name in usage.unknown_functions]
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
    return problems


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


def scrape_app(directory: Path) -> str:
    """The real app's /metrics after it served one request (so Litestar's middleware has created the
    hookgate_request* metrics). Production mode: no background task starts and nothing connects.
    Single-process mode, so every declared family is listed even before its first observation."""
    settings = Settings(mode="production", database_url=f"sqlite+aiosqlite:///{directory / 'unused.db'}", secret_key="k" * 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
            response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text
