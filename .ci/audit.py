"""Audit the installed dependencies with pip-audit (PyPI's advisory data, the OSV feed behind it).

Policy: a known vulnerability with a fixed release fails CI — upgrade the pin, or add its id to
``.ci/pip-audit-ignore`` with the reason it does not apply and a date to look again. One without
any fix yet is printed as a warning (there is nothing to upgrade to). A package pip-audit could
not look up (PyPI's per-release JSON unreachable, as behind some mirrors) is reported as NOT
AUDITED, never counted as clean; that alone does not fail CI, since it says nothing about the code.

Fallback for such mirrors: PyPI's project JSON (``/pypi/<name>/json``) still answers, and its
``vulnerabilities`` are those of the project's latest release. A package installed at exactly that
release is audited from there; one at an older release stays NOT AUDITED.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

IGNORE_FILE = Path(__file__).with_name("pip-audit-ignore")
PROJECT_JSON = "https://pypi.org/pypi/{name}/json"


def _ignored() -> dict[str, str]:
    """``ID  reason…`` per line; ``#`` starts a comment."""
    entries = {}
    for line in IGNORE_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            vuln_id, _, reason = line.partition(" ")
            entries[vuln_id] = reason.strip()
    return entries


def _latest_release_vulns(name: str, version: str) -> list[dict[str, object]] | None:
    """pip-audit's shape of the advisories for ``name==version`` if it is the latest release, else None."""
    try:
        with urllib.request.urlopen(PROJECT_JSON.format(name=name), timeout=20) as response:
            project = json.load(response)
    except (OSError, ValueError):
        return None
    if project["info"]["version"] != version:
        return None
    return [
        {"id": vuln["id"], "aliases": vuln.get("aliases") or [], "fix_versions": vuln.get("fixed_in") or []}
        for vuln in project.get("vulnerabilities", [])
        if not vuln.get("withdrawn")
    ]


def _fill_skipped(dependencies: list[dict[str, object]]) -> None:
    """Audit what pip-audit skipped from the project JSON, where the installed release is the latest."""
    for dependency in dependencies:
        if "skip_reason" not in dependency:
            continue
        version = metadata.version(str(dependency["name"]))
        vulns = _latest_release_vulns(str(dependency["name"]), version)
        if vulns is not None:
            del dependency["skip_reason"]
            dependency.update(version=version, vulns=vulns)


def main() -> int:
    found = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off", "-f", "json"],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(found.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit did not produce a report (exit {found.returncode}):\n{found.stderr}", file=sys.stderr)
        return 2
    _fill_skipped(report["dependencies"])
    ignored, failures = _ignored(), []
    skipped = [d for d in report["dependencies"] if "skip_reason" in d]
    for dependency in report["dependencies"]:
        for vuln in dependency.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            line = f"{dependency['name']} {dependency['version']}: {vuln['id']} (fixed in {', '.join(vuln['fix_versions']) or 'nothing yet'})"
            if ids & set(ignored):
                print(f"ignored (reviewed): {line}")
            elif vuln["fix_versions"]:
                failures.append(line)
            else:
                print(f"warning, no fix released: {line}")
    audited = len(report["dependencies"]) - len(skipped)
    for line in failures:
        print(f"VULNERABLE: {line}", file=sys.stderr)
    if skipped:
        print(f"NOT AUDITED: {', '.join(d['name'] for d in skipped)} (e.g. {skipped[0]['skip_reason']})", file=sys.stderr)
    print(f"pip-audit: {audited} packages audited, {len(skipped)} not audited, {len(failures)} fixable vulnerabilities")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
