"""``hapax report``: what the cost ledger says requests cost, grouped by labels or columns.

The ledger (``hapax.wire``: ``LEDGER_FILE_PATTERN``, ``LEDGER_TABLE``, ``LEDGER_COLUMNS``) is
one SQLite file per month, which ext_proc writes in WAL mode while this reads it: each file is
opened read-only, and a WAL reader sees what was committed when its query began without
waiting for a writer. Only the files of the months the period touches are opened.

A fleet's ledger in PostgreSQL (``--ledger postgresql://...``) is read with the same query in
its dialect.

The report is a table on stdout, one row per group, and optionally a CSV file, a Parquet file or
both, with one row per group and UTC day in FinOps FOCUS column names (``focus``; ``focus_csv``,
``focus_parquet``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from hapax import wire

NO_VALUE = "(none)"  # the group of a record without the label, or with an empty column
DEFAULT_BY = ("department",)
# The columns a report can group by: the ledger's text dimensions, not its labels (grouped by
# key instead), its per-request id, its time or its measures.
GROUP_COLUMNS = tuple(name for name, sql_type in wire.LEDGER_COLUMNS
                      if sql_type.startswith("TEXT NOT NULL") and name != "labels")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # a metrics label's name (Prometheus' rule)
_OPEN_TIMEOUT_S = 5.0  # a WAL reader waits only while a writer recovers or resets the WAL
_DAY_S = 86400

Group = tuple[str, ...]


class LedgerError(Exception):
    """The ledger directory, or a file in it, cannot be read."""


class PeriodError(ValueError):
    """A period that ends before it starts."""


def utc_day(text: str) -> date:
    """A ``YYYY-MM-DD`` command-line date (argparse's ``type``)."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(f"not a YYYY-MM-DD date: {text!r}")
    return date.fromisoformat(text)


def group_key(text: str) -> str:
    """A ``--by`` key: one of ``GROUP_COLUMNS``, or a metrics label's name."""
    if text not in GROUP_COLUMNS and not _LABEL_KEY.fullmatch(text):
        raise ValueError(f"not a column ({', '.join(GROUP_COLUMNS)}) or a label name: {text!r}")
    return text


def group_keys(text: str) -> list[str]:
    """``--by``'s value: one key, or several separated by commas (``experiment,variant``)."""
    return [group_key(key) for key in text.split(",")]


@dataclass(frozen=True)
class Period:
    """From ``start`` (inclusive) to ``end`` (exclusive), both UTC."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, since: date | None, until: date | None, now: datetime) -> Period:
        """``until``'s whole day (default: now), from ``since`` (default: the end's month's first day)."""
        end = _midnight(until + timedelta(days=1)) if until else now
        start = _midnight(since) if since else _midnight((end - timedelta(microseconds=1)).date().replace(day=1))
        if start >= end:
            raise PeriodError(f"the period from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC is empty")
        return cls(start, end)

    def months(self) -> list[tuple[int, int]]:
        last = self.end - timedelta(microseconds=1)
        months, year, month = [], self.start.year, self.start.month
        while (year, month) <= (last.year, last.month):
            months.append((year, month))
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return months

    def describe(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class Totals:
    """What a set of records adds up to."""

    requests: int = 0
    input_tokens: int = 0   # NULL counts as 0
    output_tokens: int = 0
    unknown_usage: int = 0  # requests without an input or an output token count
    cost_usd: float = 0.0
    providers: set[str] = field(default_factory=set)  # those that answered

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.unknown_usage += other.unknown_usage
        self.cost_usd += other.cost_usd
        self.providers |= other.providers


@dataclass
class Report:
    """The period's records, added up per group and UTC day."""

    period: Period
    by: tuple[str, ...]
    files: list[Path]  # SQLite's monthly files read (none for PostgreSQL)
    days: dict[tuple[Group, date], Totals] = field(default_factory=dict)
    database: str = ""  # the PostgreSQL ledger read, as it may be shown (no password)

    def add(self, group: Group, day: date, totals: Totals) -> None:
        self.days.setdefault((group, day), Totals()).add(totals)

    def groups(self) -> list[tuple[Group, Totals]]:
        """Each group's totals, the costliest first."""
        groups: dict[Group, Totals] = {}
        for (group, _), totals in self.days.items():
            groups.setdefault(group, Totals()).add(totals)
        return sorted(groups.items(), key=lambda item: (-item[1].cost_usd, item[0]))

    def total(self) -> Totals:
        total = Totals()
        for totals in self.days.values():
            total.add(totals)
        return total


def ledger_files(directory: Path, period: Period) -> list[Path]:
    """The period's monthly files that exist; LedgerError if the directory cannot be read."""
    try:
        names = {entry.name for entry in os.scandir(directory)}
    except OSError as err:
        raise LedgerError(f"cannot read the ledger directory {directory}: {err.strerror or err}") from err
    wanted = (wire.LEDGER_FILE_PATTERN.format(year=year, month=month) for year, month in period.months())
    return [directory / name for name in wanted if name in names]


def read_report(directory: Path, period: Period, by: tuple[str, ...]) -> Report:
    report = Report(period, by, ledger_files(directory, period))
    for path in report.files:
        for group, day, totals in _file_totals(path, period, by):
            report.add(group, day, totals)
    return report


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def read_postgres_report(url: str, period: Period, by: tuple[str, ...]) -> Report:
    """The same report from a fleet's PostgreSQL ledger (ledger: {store: postgresql://...})."""
    import psycopg  # only this source needs it

    parts = urlsplit(url)
    shown = f"PostgreSQL {parts.hostname or 'localhost'}{f':{parts.port}' if parts.port else ''}{parts.path}"
    report = Report(period, by, [], database=shown)
    parameters = [key for key in by if key not in GROUP_COLUMNS]
    positions = ", ".join(str(i) for i in range(1, len(by) + 3))
    try:
        with psycopg.connect(url, connect_timeout=int(_OPEN_TIMEOUT_S)) as connection:
            present = {row[0] for row in connection.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped", (wire.LEDGER_TABLE,))}
            if not present:
                return report  # no gateway has written to it yet
            # A column an earlier release's table lacks (no newer gateway has connected) is empty.
            keys = [(key if key in present else "''") if key in GROUP_COLUMNS else "(labels::jsonb ->> %s)"
                    for key in by]
            select = (f"SELECT {', '.join(keys)}, FLOOR(time / {_DAY_S})::bigint, provider, COUNT(*), "
                      "SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)), "
                      "SUM(CASE WHEN input_tokens IS NULL OR output_tokens IS NULL THEN 1 ELSE 0 END), "
                      f"SUM(cost_usd) FROM {wire.LEDGER_TABLE} WHERE time >= %s AND time < %s GROUP BY {positions}")
            rows = connection.execute(select, (*parameters, period.start.timestamp(), period.end.timestamp()))
            for row in rows.fetchall():
                day, provider, *counts, cost = row[len(by):]
                # PostgreSQL's sums of integers are decimals; the report's are ints.
                report.add(*_row_totals((*row[:len(by)], day, provider, *(int(c) for c in counts), float(cost)),
                                        len(by)))
    except psycopg.Error as err:
        text = str(err).replace(parts.password, "***") if parts.password else str(err)
        raise LedgerError(f"cannot read the ledger in {shown}: {text.strip()}") from None
    return report


def _file_totals(path: Path, period: Period, by: tuple[str, ...]) -> Iterator[tuple[Group, date, Totals]]:
    try:
        with _read_only(path) as connection:
            if not _has_table(connection):  # a file its writer has just created
                return
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({wire.LEDGER_TABLE})")}
            select, parameters = _query(by, present)
            rows = connection.execute(select, (*parameters, period.start.timestamp(), period.end.timestamp()))
            yield from (_row_totals(row, len(by)) for row in rows.fetchall())
    except sqlite3.Error as err:
        raise LedgerError(f"cannot read the ledger file {path}: {err}") from err


def _read_only(path: Path) -> closing[sqlite3.Connection]:
    """``mode=ro``: this process never writes the ledger (closed on leaving the ``with``)."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    return closing(sqlite3.connect(uri, uri=True, timeout=_OPEN_TIMEOUT_S))


def _has_table(connection: sqlite3.Connection) -> bool:
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (wire.LEDGER_TABLE,))
    return found.fetchone() is not None


def _query(by: tuple[str, ...], present: set[str]) -> tuple[str, list[str]]:
    """Totals per group, UTC day and provider (a group's CSV rows name its providers). A column the
    file lacks (an earlier release wrote it, read-only here) is empty for all its records."""
    keys = [(key if key in present else "''") if key in GROUP_COLUMNS else "json_extract(labels, ?)" for key in by]
    parameters = [f'$."{key}"' for key in by if key not in GROUP_COLUMNS]
    positions = ", ".join(str(i) for i in range(1, len(by) + 3))
    select = (f"SELECT {', '.join(keys)}, CAST(time / {_DAY_S} AS INTEGER), provider, COUNT(*), "
              "SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)), "
              "SUM(input_tokens IS NULL OR output_tokens IS NULL), SUM(cost_usd) "
              f"FROM {wire.LEDGER_TABLE} WHERE time >= ? AND time < ? GROUP BY {positions}")
    return select, parameters


def _row_totals(row: tuple, keys: int) -> tuple[Group, date, Totals]:
    group = tuple(_group_value(value) for value in row[:keys])
    day, provider, requests, input_tokens, output_tokens, unknown, cost = row[keys:]
    totals = Totals(requests, input_tokens, output_tokens, unknown, cost, {provider} if provider else set())
    return group, date(1970, 1, 1) + timedelta(days=day), totals


def _group_value(value: object) -> str:
    if value is None or value == "":
        return NO_VALUE
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------- the table

_MEASURES = ("requests", "input tokens", "output tokens", "unknown usage", "cost (USD)")


def format_table(report: Report) -> str:
    """One row per group, the costliest first, then the total; numbers right-aligned."""
    rows = [[*report.by, *_MEASURES]]
    rows += [[*group, *_measures(totals)] for group, totals in report.groups()]
    rows.append(["total", *[""] * (len(report.by) - 1), *_measures(report.total())])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    keys = len(report.by)
    return "\n".join(_line(row, widths, keys) for row in rows)


def _measures(totals: Totals) -> list[str]:
    counts = (totals.requests, totals.input_tokens, totals.output_tokens, totals.unknown_usage)
    return [*(f"{count:,}" for count in counts), f"{totals.cost_usd:.4f}"]


def _line(row: list[str], widths: list[int], keys: int) -> str:
    cells = [cell.ljust(width) if i < keys else cell.rjust(width)
             for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
    return "  ".join(cells).rstrip()


def describe(report: Report, directory: Path) -> str:
    """What stdout shows: the table under a line saying what it covers, or why there is none."""
    period = report.period.describe()
    if report.database:
        if not report.days:
            return f"No requests recorded from {period} ({report.database})."
        return f"Requests from {period} ({report.database}), by {', '.join(report.by)}:\n{format_table(report)}"
    if not report.files:
        wanted = ", ".join(wire.LEDGER_FILE_PATTERN.format(year=y, month=m) for y, m in report.period.months())
        return f"No ledger files for {period} in {directory} (looked for {wanted})."
    files = ", ".join(path.name for path in report.files)
    if not report.days:
        return f"No requests recorded from {period} ({files})."
    return f"Requests from {period} ({files}), by {', '.join(report.by)}:\n{format_table(report)}"
