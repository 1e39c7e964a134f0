"""A cost report's FOCUS rows (``hapax.focus``) as Parquet, typed: costs float64, counts int64,
the charge period UTC timestamps, text strings.

pyarrow is an optional dependency (``pip install 'hapax[parquet]'``), imported by these
functions only: the gateway never loads it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from hapax import focus
from hapax.ledger_report import Report

INSTALL = "pip install 'hapax[parquet]'"


class ParquetUnavailable(Exception):
    """pyarrow is not installed."""


def require() -> None:
    """ParquetUnavailable, naming the fix, unless pyarrow can be imported."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:
        raise ParquetUnavailable(f"--parquet needs pyarrow, which is not installed: {INSTALL}") from err


def write(report: Report, path: Path) -> int:
    """The rows, by day then group, in one file; how many rows. OSError if it cannot be written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types: dict[type, Any] = {float: pa.float64(), int: pa.int64(), str: pa.string(),
                              datetime: pa.timestamp("us", tz="UTC")}
    names = focus.columns(report.by)
    schema = pa.schema([(name, types[focus.column_type(name)]) for name in names])
    lines = focus.rows(report)
    table = pa.table({name: [row[name] for row in lines] for name in names}, schema=schema)
    pq.write_table(table, path)
    return len(lines)
