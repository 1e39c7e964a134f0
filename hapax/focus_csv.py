"""A cost report's FOCUS rows (``hapax.focus``) as CSV: what Power BI, Tableau and the cloud cost
tools import, written with the standard library alone.

Costs in dollars to ``focus.COST_DECIMALS`` decimals without trailing zeros, times as FOCUS's
``YYYY-MM-DDTHH:mm:ssZ``, counts as integers.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from hapax import focus
from hapax.ledger_report import Report


def write(report: Report, path: Path) -> int:
    """The header, then a row per group and day, by day then group; how many rows."""
    lines = focus.rows(report)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=focus.columns(report.by), lineterminator="\n")
        writer.writeheader()
        writer.writerows({name: _text(value) for name, value in row.items()} for row in lines)
    return len(lines)


def _text(value: str | int | float | datetime) -> str:
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%dT%H:%M:%S}Z"
    if isinstance(value, float):
        return f"{value:.{focus.COST_DECIMALS}f}".rstrip("0").rstrip(".")
    return str(value)
