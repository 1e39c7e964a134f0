"""The cost ledger: one record per request, for finance, written off the request path.

Metrics are aggregates that reset and sample; a ledger keeps every request (``ledger:`` in the
config): its time, id, route and labels, client, provider and model, tokens, cost and the
configuration version whose price table priced it, status and outcome (``wire.LEDGER_COLUMNS``).
Records come from where requests are counted: the access log (every answer but a delivered
stream) and the upstream step (a delivered stream, at its end), so each request is written once;
the request id is the table's key, so a record written twice stays one.

Writing never slows a request: a record joins an in-memory batch, and a task writes the batch
in one transaction (in a thread, every ``FLUSH_SECONDS``) to SQLite in WAL mode, one file per
month (``wire.LEDGER_FILE_PATTERN``), which several workers share. The batch is bounded: past
``MAX_PENDING`` records waiting, new ones are dropped and counted
(``hapax_ledger_records_total{result="dropped"}``), so a stalled disk costs records, never
memory. Months older than the retention are deleted whole. A worker that stops writes what it
holds first.

`hapax report` (hapax/ledger_report.py) reads the files.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from pathlib import Path

from ext_proc.metrics import GatewayMetrics
from ext_proc.runtime import LedgerSettings
from hapax import wire

log = logging.getLogger("hapax.ext_proc")

FLUSH_SECONDS = 0.5
MAX_PENDING = 100_000
PRUNE_EVERY_SECONDS = 3600.0
BUSY_TIMEOUT_SECONDS = 5.0
_COLUMNS = ", ".join(name for name, _ in wire.LEDGER_COLUMNS)
_INSERT = (f"INSERT OR IGNORE INTO {wire.LEDGER_TABLE} ({_COLUMNS}) "
           f"VALUES ({', '.join('?' for _ in wire.LEDGER_COLUMNS)})")


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One request, in wire.LEDGER_COLUMNS' order."""

    time: float
    request_id: str
    route: str
    labels: str  # JSON
    key_id: str
    client: str
    provider: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cost_usd: float
    price_version: str
    status: int
    outcome: str


def labels_json(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def cost_usd(price: tuple[float, float] | None, inputs: int | None, outputs: int | None) -> float:
    """What the answer cost, from the price table: 0 when its price or a count is unknown (as the metrics do)."""
    if price is None or (inputs is None and outputs is None):
        return 0.0
    return ((inputs or 0) * price[0] + (outputs or 0) * price[1]) / 1e6


def month_file(directory: Path, when: float) -> Path:
    moment = time.gmtime(when)
    return directory / wire.LEDGER_FILE_PATTERN.format(year=moment.tm_year, month=moment.tm_mon)


class Ledger:
    """This worker's batch of records and the task that writes it."""

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self.metrics = metrics
        self.settings: LedgerSettings | None = None
        self.pending: list[LedgerRecord] = []
        self._flusher: asyncio.Task[None] | None = None
        self._connections: dict[Path, sqlite3.Connection] = {}
        self._pruned = 0.0

    def configure(self, settings: LedgerSettings | None) -> None:
        self.settings = settings

    def record(self, record: LedgerRecord) -> None:
        if self.settings is None:
            return
        if len(self.pending) >= MAX_PENDING:
            self._count("dropped")
            return
        self.pending.append(record)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        """Writes what is pending, off the event loop."""
        settings, batch, self.pending = self.settings, self.pending, []
        if not batch or settings is None:
            return
        try:
            await asyncio.to_thread(self._write, settings, batch)
        except (sqlite3.Error, OSError):
            log.exception("could not write ledger records; they are lost", extra={"records": len(batch)})
            self._count("failed", len(batch))
            return
        self._count("written", len(batch))

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _write(self, settings: LedgerSettings, batch: list[LedgerRecord]) -> None:
        by_file: dict[Path, list[tuple]] = {}
        for record in batch:
            by_file.setdefault(month_file(settings.directory, record.time), []).append(astuple(record))
        for path, rows in by_file.items():
            connection = self._connection(path)
            with connection:  # one transaction
                connection.executemany(_INSERT, rows)
        if time.time() - self._pruned > PRUNE_EVERY_SECONDS:
            self._pruned = time.time()
            prune(settings)

    def _connection(self, path: Path) -> sqlite3.Connection:
        connection = self._connections.get(path)
        if connection is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = open_ledger_file(path)
            self._connections[path] = connection
        return connection

    def _count(self, result: str, records: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.ledger_records.labels(result).inc(records)


def open_ledger_file(path: Path) -> sqlite3.Connection:
    """A month's file, created with its table (WAL: readers never wait on the writers)."""
    path.touch(mode=0o600, exist_ok=True)  # it says who spent what: no other local user reads it
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    columns = ", ".join(f"{name} {kind}" for name, kind in wire.LEDGER_COLUMNS)
    connection.execute(f"CREATE TABLE IF NOT EXISTS {wire.LEDGER_TABLE} ({columns})")
    connection.commit()
    return connection


def prune(settings: LedgerSettings, now: float | None = None) -> list[Path]:
    """Deletes the months that ended more than the retention ago; returns them."""
    cutoff = (now if now is not None else time.time()) - settings.retention_days * 86400
    gone = []
    for path in settings.directory.glob("ledger-*.sqlite"):
        year, month = _month_of(path)
        if year is None or month is None:
            continue
        end = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
        if end < cutoff:
            for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                companion.unlink(missing_ok=True)
            gone.append(path)
    return gone


def _month_of(path: Path) -> tuple[int | None, int | None]:
    try:
        _, year, month = path.stem.split("-")
        return int(year), int(month)
    except ValueError:
        return None, None
