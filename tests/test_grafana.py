"""The Grafana dashboard and the Prometheus alert rules (deploy/grafana) query only metrics and
labels the code really exports, are well-formed, and are documented in docs/OBSERVABILITY.md:
a renamed metric or label breaks this test instead of silently emptying a panel or an alert."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.promql import PROMETHEUS_SERIES, parse_exposition, parse_promql, problems_in, scrape_app

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "hookgate.json"
ALERTS = ROOT / "deploy" / "grafana" / "alerts.yaml"
DOCS = ROOT / "docs" / "OBSERVABILITY.md"


def test_the_scanner_finds_metrics_and_labels() -> None:
    usage = parse_promql(
        'histogram_quantile(0.99, sum by (path, le) (rate(a_bucket{status_code=~"5..|x"}[$__rate_interval])))'
        ' / ignoring(x) b_total offset 5m or vector(0) > bool 1 and absent(up{job="w"})'
    )
    assert usage.metrics == {"a_bucket", "b_total", "up"}
    assert usage.matchers == [("a_bucket", "status_code"), ("up", "job")]
    assert usage.grouping == {"path", "le", "x"}
    assert parse_promql("rat(a[5m])").unknown_functions == {"rat"}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> str:
    return scrape_app(tmp_path_factory.mktemp("grafana"))


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
        seen |= parse_promql(expr).metrics
        problems += problems_in(where, expr, known)
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
