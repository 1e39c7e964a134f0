"""The embedded limit store: one SQLite file that the ext_proc workers of one gateway share.

Each reserve and settle is one ``BEGIN IMMEDIATE`` transaction: it takes the file's write
lock before it reads, so two processes can never both read the last free token and both
take it. The statements are synchronous behind ``async def`` (a reserve takes about 50 us,
a settle 30 us): a hop to a thread would cost more than the work. Only the wait for
another process's write lock is asynchronous (see _begin), up to ``busy_timeout``; past
it the call raises LimitStoreUnavailable.

Rows expire with their windows (an ``expires`` column); a reserve deletes the expired ones
now and then, inside its own transaction, measured by the caller's ``now`` as windows are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from ext_proc.limits.model import Decision, Limit, LimitState, LimitStoreUnavailable, Metric, check_amounts
from ext_proc.limits.plan import Counter, Plan, plan

SCHEMA = (
    # WITHOUT ROWID: rows are looked up by their key only, which then is the table itself.
    """CREATE TABLE IF NOT EXISTS counters (
         scope TEXT NOT NULL, metric TEXT NOT NULL, period TEXT NOT NULL, start INTEGER NOT NULL,
         used INTEGER NOT NULL, expires INTEGER NOT NULL,
         PRIMARY KEY (scope, metric, period, start)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS counters_expires ON counters (expires)",
    # charges: JSON [[scope, metric, period, start, amount], ...], one per distinct counter.
    """CREATE TABLE IF NOT EXISTS reservations (
         request_id TEXT PRIMARY KEY, charges TEXT NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS reservations_expires ON reservations (expires)",
)
COUNTER_KEY = "scope = ? AND metric = ? AND period = ? AND start = ?"
# Pruning is a range delete on an index: cheap, but no reason to pay it on every call.
PRUNE_EVERY = 1000
# Between two tries for the write lock: short, as transactions are; doubling to a bound.
FIRST_WAIT, LONGEST_WAIT = 0.0001, 0.002


class SqliteLimitStore:
    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 1.0,
                 prune_every: int = PRUNE_EVERY) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._prune_every = prune_every
        self._until_prune = 0  # the first reserve prunes what expired while no gateway ran
        _create_owner_only(self.path)
        # isolation_level=None: no implicit transactions; each call opens its own, explicitly.
        # SQLite's own busy handler waits while the file is set up, then no more (_begin).
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        try:
            self._set_up()
        except LimitStoreUnavailable:
            self._db.close()
            raise
        except sqlite3.OperationalError as error:  # the pragmas, outside any transaction
            self._db.close()
            raise LimitStoreUnavailable(f"SQLite limit store {self.path}: {error}") from error

    def _set_up(self) -> None:
        # WAL: readers (states) never wait for the writer. synchronous=NORMAL is durable
        # across a crash of the process; a power cut may lose the last transactions, which
        # for usage counters is a few requests' worth.
        self._when_free("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._setup_transaction() as db:
            for statement in SCHEMA:
                db.execute(statement)
        self._db.execute("PRAGMA busy_timeout = 0")

    async def reserve(self, request_id: str, limits: Sequence[Limit], amounts: Mapping[Metric, int],
                      now: float) -> Decision:
        wanted = plan(limits, amounts, now)
        if not wanted.charges:
            return Decision(True, (), None)
        async with self._transaction() as db:
            self._prune_now_and_then(db, now)
            used = [_used(db, charge.counter) for charge in wanted.charges]
            if _reserved(db, request_id, now):
                # A retry of an admitted request: admitted again, charged once.
                return wanted.decision(used, None)
            refused = wanted.first_refusal(used)
            if refused is not None:
                return wanted.decision(used, refused)
            _charge(db, wanted)
            _record(db, request_id, wanted)
        # Limits that share a counter share its amount too, so adding it to each is exact.
        return wanted.decision([count + charge.amount for count, charge in zip(used, wanted.charges, strict=True)],
                               None)

    async def settle(self, request_id: str, actual: Mapping[Metric, int]) -> bool:
        check_amounts(actual)
        async with self._transaction() as db:
            row = db.execute("SELECT charges FROM reservations WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                return False
            for scope, metric, period, start, reserved in json.loads(row[0]):
                spent = actual.get(Metric(metric))
                if spent is not None:
                    # An UPDATE, never an insert: a counter whose window ended stays gone.
                    db.execute(f"UPDATE counters SET used = MAX(0, used + ?) WHERE {COUNTER_KEY}",
                               (spent - reserved, scope, metric, period, start))
            db.execute("DELETE FROM reservations WHERE request_id = ?", (request_id,))
        return True

    async def states(self, limits: Sequence[Limit], now: float) -> tuple[LimitState, ...]:
        wanted = plan(limits, {}, now)
        # A read transaction: one snapshot for all the limits, and in WAL it waits for no writer.
        async with self._transaction("DEFERRED") as db:
            return wanted.states([_used(db, charge.counter) for charge in wanted.charges])

    async def close(self) -> None:
        self._db.close()

    @contextlib.asynccontextmanager
    async def _transaction(self, mode: Literal["IMMEDIATE", "DEFERRED"] = "IMMEDIATE"
                           ) -> AsyncIterator[sqlite3.Connection]:
        # The body must not await: the write lock is held from BEGIN to COMMIT.
        await self._begin(mode)
        with self._finished():
            yield self._db

    async def _begin(self, mode: str) -> None:
        """Opens a transaction, waiting for another process's write lock on the event loop.

        SQLite's busy handler would sleep in the call (1, 2, 5, 10... 100 ms), the event loop
        and every stream of the worker with it: with 4 processes reserving and settling
        flat out on 2 CPUs, a worker's loop stalled for up to 200-540 ms. Tried again every
        0.1 to 2 ms on the loop instead, its longest stall was 8-31 ms (WAL checkpoints, the
        CPUs shared four ways).
        """
        deadline = time.monotonic() + self._busy_timeout
        wait = FIRST_WAIT
        while True:
            try:
                self._db.execute(f"BEGIN {mode}")
                return
            except sqlite3.OperationalError as error:
                if not _busy(error) or time.monotonic() >= deadline:
                    raise LimitStoreUnavailable(f"SQLite limit store {self.path}: {error}") from error
            await asyncio.sleep(wait)
            wait = min(2 * wait, LONGEST_WAIT)

    def _when_free(self, statement: str) -> None:
        """``statement``, tried again while another connection holds the file, up to ``busy_timeout``.

        For the switch of a new file to WAL, which needs the file to itself: when the workers start
        together, each holding a read lock while it asks for that, SQLite answers all but one
        "locked" at once, without its busy handler (which would deadlock them). In the
        constructor, which cannot await: the sleeps block, as SQLite's busy handler does there.
        """
        deadline = time.monotonic() + self._busy_timeout
        wait = FIRST_WAIT
        while True:
            try:
                self._db.execute(statement)
                return
            except sqlite3.OperationalError as error:
                if not _busy(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(wait)
            wait = min(2 * wait, LONGEST_WAIT)

    @contextlib.contextmanager
    def _setup_transaction(self) -> Iterator[sqlite3.Connection]:
        # In the constructor, which cannot await: SQLite's busy handler does the waiting.
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise LimitStoreUnavailable(f"SQLite limit store {self.path}: {error}") from error
        with self._finished():
            yield self._db

    @contextlib.contextmanager
    def _finished(self) -> Iterator[None]:
        """Commits the open transaction, or rolls it back if its body raised."""
        try:
            yield
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as error:
            # A full disk, a file gone read-only: nothing a retry would mend.
            raise LimitStoreUnavailable(f"SQLite limit store {self.path}: {error}") from error
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _prune_now_and_then(self, db: sqlite3.Connection, now: float) -> None:
        if self._until_prune > 0:
            self._until_prune -= 1
            return
        self._until_prune = self._prune_every - 1
        db.execute("DELETE FROM counters WHERE expires <= ?", (now,))
        db.execute("DELETE FROM reservations WHERE expires <= ?", (now,))


def _busy(error: sqlite3.OperationalError) -> bool:
    # The primary code: SQLITE_BUSY_RECOVERY, _SNAPSHOT and _TIMEOUT are waits too.
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _create_owner_only(path: Path) -> None:
    # The file holds each client's usage: the gateway's user only. O_CREAT applies the mode
    # to a new file only; SQLite gives its -wal and -shm files the database file's mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _used(db: sqlite3.Connection, counter: Counter) -> int:
    row = db.execute(f"SELECT used FROM counters WHERE {COUNTER_KEY}", _key(counter)).fetchone()
    return 0 if row is None else int(row[0])


def _key(counter: Counter) -> tuple[str, str, str, int]:
    return counter.scope, counter.metric.value, counter.period.value, counter.start


def _reserved(db: sqlite3.Connection, request_id: str, now: float) -> bool:
    # An expired record the pruning has not reached yet no longer counts.
    row = db.execute("SELECT 1 FROM reservations WHERE request_id = ? AND expires > ?", (request_id, now))
    return row.fetchone() is not None


def _charge(db: sqlite3.Connection, wanted: Plan) -> None:
    # An amount of 0 still creates the row: the settle adds the actual amount to it.
    for counter, charge in wanted.counters().items():
        db.execute("""INSERT INTO counters (scope, metric, period, start, used, expires) VALUES (?, ?, ?, ?, ?, ?)
                      ON CONFLICT (scope, metric, period, start) DO UPDATE SET used = used + excluded.used""",
                   (*_key(counter), charge.amount, charge.end))


def _record(db: sqlite3.Connection, request_id: str, wanted: Plan) -> None:
    charges = [[*_key(counter), charge.amount] for counter, charge in wanted.counters().items()]
    # OR REPLACE: an expired record of the same id may not have been pruned yet.
    db.execute("INSERT OR REPLACE INTO reservations (request_id, charges, expires) VALUES (?, ?, ?)",
               (request_id, json.dumps(charges), wanted.reservation_expires()))
