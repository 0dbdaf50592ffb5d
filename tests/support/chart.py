"""Rendering the Helm chart (deploy/helm/hookgate) with Helm's own Go engine (helm-python-sdk), for
the chart tests and the tests that run its pods as processes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "hookgate"
REQUIRED = yaml.safe_load((CHART / "ci" / "required-values.yaml").read_text())


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base`` key by key, as Helm coalesces a values file over the defaults."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def render(chart: Any, overrides: dict[str, Any] | None = None, *, base: dict[str, Any] = REQUIRED) -> list[dict[str, Any]]:
    """The manifests `helm install` would apply, as objects (NOTES.txt left out)."""
    values = merge(base, overrides or {})
    chart.validate_schema(values)  # what `helm install` does before rendering
    manifests = chart.render(values, name="hg", namespace="hooks", is_install=True)
    return [
        document
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]
