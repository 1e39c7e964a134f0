"""Where the cost ledger's records go (ext_proc/ledger.py): SQLite files, or PostgreSQL.

Both hold one table, ``wire.LEDGER_TABLE`` with ``wire.LEDGER_COLUMNS``, keyed by request id: a
record written twice stays one. Their calls are synchronous; the ledger runs them in a thread.

- ``SqliteLedgerStore``: the embedded default, nothing to install. One file a month
  (``wire.LEDGER_FILE_PATTERN``, by the request's start, UTC) in a directory the workers of one
  gateway share, in WAL mode (readers such as ``hapax report`` never wait on the writers), mode
  0600 (it says who spent what). Pruning deletes whole months.
- ``PostgresLedgerStore``: for a fleet, every gateway writing to one database
  (``ledger: {store: postgresql://...}``). Pruning deletes rows.
"""

from __future__ import annotations

import calendar
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ext_proc.runtime import LedgerSettings
from hapax import wire

BUSY_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5
_NAMES = ", ".join(name for name, _ in wire.LEDGER_COLUMNS)


class LedgerStoreError(Exception):
    """The store could not take a batch (its records are lost, and counted)."""


class LedgerStore(Protocol):
    def write(self, rows: Sequence[tuple[Any, ...]]) -> None: ...

    def prune(self, before: float) -> None: ...

    def close(self) -> None: ...


def ledger_store(settings: LedgerSettings) -> LedgerStore:
    if settings.store:
        return PostgresLedgerStore(settings.store)
    assert settings.directory is not None
    return SqliteLedgerStore(settings.directory)


def month_file(directory: Path, when: float) -> Path:
    moment = time.gmtime(when)
    return directory / wire.LEDGER_FILE_PATTERN.format(year=moment.tm_year, month=moment.tm_mon)



class SqliteLedgerStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._connections: dict[Path, sqlite3.Connection] = {}

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        by_file: dict[Path, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_file.setdefault(month_file(self.directory, row[0]), []).append(row)
        insert = (f"INSERT OR IGNORE INTO {wire.LEDGER_TABLE} ({_NAMES}) "
                  f"VALUES ({', '.join('?' for _ in wire.LEDGER_COLUMNS)})")
        try:
            for path, batch in by_file.items():
                with self._connection(path) as connection:  # one transaction
                    connection.executemany(insert, batch)
        except (sqlite3.Error, OSError) as error:
            raise LedgerStoreError(str(error)) from error

    def prune(self, before: float) -> None:
        for path in list(self.directory.glob("ledger-*.sqlite")):
            end = _month_end(path)
            if end is not None and end < before:
                self._forget(path)
                for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                    companion.unlink(missing_ok=True)

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _connection(self, path: Path) -> sqlite3.Connection:
        connection = self._connections.get(path)
        if connection is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = self._connections[path] = open_ledger_file(path)
        return connection

    def _forget(self, path: Path) -> None:
        connection = self._connections.pop(path, None)
        if connection is not None:
            connection.close()


def open_ledger_file(path: Path) -> sqlite3.Connection:
    """A month's file, created with its table (WAL: readers never wait on the writers)."""
    path.touch(mode=0o600, exist_ok=True)  # it says who spent what: no other local user reads it
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    columns = ", ".join(f"{name} {kind}" for name, kind in wire.LEDGER_COLUMNS)
    connection.execute(f"CREATE TABLE IF NOT EXISTS {wire.LEDGER_TABLE} ({columns})")
    present = {row[1] for row in connection.execute(f"PRAGMA table_info({wire.LEDGER_TABLE})")}
    for name, kind in wire.LEDGER_COLUMNS:  # a file an earlier release created lacks the newer columns
        if name not in present:
            connection.execute(f"ALTER TABLE {wire.LEDGER_TABLE} ADD COLUMN {name} {kind}")
    connection.commit()
    return connection


def _month_end(path: Path) -> float | None:
    """When the month of a ledger file ended (None: not a ledger file's name)."""
    try:
        _, year, month = (int(part) if n else part for n, part in enumerate(path.stem.split("-")))
    except ValueError:
        return None
    return float(calendar.timegm((int(year) + int(month) // 12, int(month) % 12 + 1, 1, 0, 0, 0)))


class PostgresLedgerStore:
    """One table in a database a fleet shares; its password is in the URL, never in a message."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        insert = (f"INSERT INTO {wire.LEDGER_TABLE} ({_NAMES}) VALUES "
                  f"({', '.join('%s' for _ in wire.LEDGER_COLUMNS)}) ON CONFLICT (request_id) DO NOTHING")
        self._run(lambda cursor: cursor.executemany(insert, rows))

    def prune(self, before: float) -> None:
        self._run(lambda cursor: cursor.execute(f"DELETE FROM {wire.LEDGER_TABLE} WHERE time < %s", (before,)))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _run(self, work: Any) -> None:
        import psycopg  # only a fleet's ledger needs it loaded

        try:
            connection = self._connect(psycopg)
            with connection.transaction(), connection.cursor() as cursor:
                work(cursor)
        except psycopg.Error as error:
            self.close()  # a broken connection is opened again for the next batch
            raise LedgerStoreError(type(error).__name__) from None  # its text may quote the URL

    def _connect(self, psycopg: Any) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
            columns = ", ".join(f"{name} {_postgres_type(kind)}" for name, kind in wire.LEDGER_COLUMNS)
            self._connection.execute(f"CREATE TABLE IF NOT EXISTS {wire.LEDGER_TABLE} ({columns})")
            for name, kind in wire.LEDGER_COLUMNS:  # a table an earlier release created lacks the newer ones
                self._connection.execute(
                    f"ALTER TABLE {wire.LEDGER_TABLE} ADD COLUMN IF NOT EXISTS {name} {_postgres_type(kind)}")
            self._connection.execute(
                f"CREATE INDEX IF NOT EXISTS {wire.LEDGER_TABLE}_time ON {wire.LEDGER_TABLE} (time)")
        return self._connection


def _postgres_type(sqlite_type: str) -> str:
    """The same column in PostgreSQL: SQLite's REAL is a double, its INTEGER may exceed 32 bits."""
    return sqlite_type.replace("REAL", "DOUBLE PRECISION").replace("INTEGER", "BIGINT")
