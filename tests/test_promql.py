"""Every PromQL expression Hookgate ships parses with Prometheus' own parser (``promtool``): the
alert rules as they are, and each dashboard query as a recording rule (Grafana's
``$__rate_interval`` replaced by a concrete range)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    return found


def _check(rules: Path) -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool() -> None:
    _check(GRAFANA / "alerts.yaml")


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    panels = json.loads((GRAFANA / "hookgate.json").read_text())["panels"]
    queries = [target["expr"] for panel in panels for target in panel.get("targets", []) if target.get("expr")]
    assert len(queries) >= 20
    rules = [
        {"record": f"hookgate:dashboard_query_{n}", "expr": query.replace("$__rate_interval", "5m")}
        for n, query in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _check(path)


def test_the_process_alerts_fire_when_they_should_and_only_then() -> None:
    """promtool's rule unit tests (tests/promtool/): no gateway at all, workers that stopped reading the backlog, a first burst of dead letters."""
    tests = Path(__file__).parent / "promtool" / "processes_test.yaml"
    result = subprocess.run([_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
