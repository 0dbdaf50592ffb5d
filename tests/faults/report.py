"""Render the fault suite's results file as the table in docs/RELIABILITY.md.

    python -m tests.faults.report [RESULTS] [--write docs/RELIABILITY.md]

RESULTS defaults to the harness's report path (``HOOKGATE_FAULT_REPORT``); the latest row of each
scenario wins. ``--write`` replaces the table between the ``fault-table`` markers of the file.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tests.faults.harness import report_path

_COLUMNS = ("scenario", "sent", "acknowledged", "stored", "delivered", "lost", "duplicates", "not acknowledged")
_MARKERS = re.compile(r"(<!-- fault-table -->\n).*?(<!-- /fault-table -->)", re.S)


def table(results: Path) -> str:
    rows: dict[str, dict[str, object]] = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        rows[row["scenario"]] = row
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    for row in rows.values():
        refused = [f"{answer} ×{count}" for answer, count in row["answers"].items() if not answer.startswith("2")]  # type: ignore[union-attr]
        cells = [str(row[column]) for column in _COLUMNS[:-1]] + [", ".join(refused) or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=report_path())
    parser.add_argument("--write", type=Path, help="a Markdown file with <!-- fault-table --> markers")
    args = parser.parse_args()
    rendered = table(args.results)
    if args.write is None:
        print(rendered, end="")
        return
    document = args.write.read_text()
    if not _MARKERS.search(document):
        raise SystemExit(f"{args.write} has no <!-- fault-table --> ... <!-- /fault-table --> markers")
    args.write.write_text(_MARKERS.sub(lambda m: m.group(1) + rendered + m.group(2), document))


if __name__ == "__main__":
    main()
