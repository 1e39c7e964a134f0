"""The cost ledger's writer and its two stores (SQLite files, a real PostgreSQL): the same tests.

Batched, once per request, bounded, pruned by age; SQLite's files one a month and private.
"""

from __future__ import annotations

import asyncio
import calendar
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import astuple
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ext_proc import ledger as ledger_module
from ext_proc.ledger import Ledger, LedgerRecord, labels_json
from ext_proc.ledger_stores import LedgerStoreError, PostgresLedgerStore, _postgres_type, ledger_store, month_file
from ext_proc.runtime import LedgerSettings, cost_usd
from hapax import wire
from hapax.ledger_report import Period, read_postgres_report, read_report
from tests.postgres_server import PostgresServer, running_postgres

NOVEMBER = calendar.timegm((2026, 11, 15, 0, 0, 0))
DECEMBER = calendar.timegm((2026, 12, 31, 23, 59, 59))
JANUARY = calendar.timegm((2027, 1, 1, 0, 0, 1))


def record(request_id: str, when: float = DECEMBER, **fields) -> LedgerRecord:
    values = dict(time=when, request_id=request_id, route="/v1/chat/completions",
                  labels=labels_json({"department": "search"}), key_id="", client="", provider="openai",
                  model="gpt-4o-mini", input_tokens=10, output_tokens=5, cached_tokens=None,
                  cost_usd=cost_usd((1.0, 2.0), 10, 5), price_version="v1", status=200, outcome="success")
    values.update(fields)
    return LedgerRecord(**values)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path) -> LedgerSettings:
    if request.param == "sqlite":
        return LedgerSettings(tmp_path / "ledger", 400)
    server = request.getfixturevalue("postgres")
    _drop_table(server.url)
    return LedgerSettings(None, 400, server.url)


def _drop_table(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {wire.LEDGER_TABLE}")


def stored(settings: LedgerSettings) -> list[tuple[str, float]]:
    """(request id, time) of every record, whichever store holds them."""
    if settings.store:
        import psycopg

        with psycopg.connect(settings.store) as db:
            return [(r[0], r[1]) for r in db.execute(
                f"SELECT request_id, time FROM {wire.LEDGER_TABLE} ORDER BY request_id")]
    out: list[tuple[str, float]] = []
    assert settings.directory is not None
    for path in sorted(settings.directory.glob("ledger-*.sqlite")):
        with sqlite3.connect(path) as db:
            out += db.execute(f"SELECT request_id, time FROM {wire.LEDGER_TABLE}").fetchall()
    return sorted(out)


def written(settings: LedgerSettings, *records: LedgerRecord) -> None:
    async def scenario() -> None:
        ledger = Ledger()
        ledger.configure(settings)
        for r in records:
            ledger.record(r)
        await ledger.close()

    asyncio.run(scenario())


def test_each_request_is_one_record_however_often_it_is_written(settings):
    written(settings, record("a"), record("b", JANUARY), record("a"))
    written(settings, record("a"))  # another worker, another batch
    assert stored(settings) == [("a", DECEMBER), ("b", JANUARY)]


def test_records_older_than_the_retention_are_deleted(settings):
    written(settings, record("old", NOVEMBER), record("new"))
    store = ledger_store(settings)
    # Before 2026-12-16: November (its file, or its rows) goes; December's record stays.
    store.prune(calendar.timegm((2026, 12, 16, 0, 0, 0)))
    store.close()
    assert stored(settings) == [("new", DECEMBER)]


def test_a_full_batch_drops_and_counts_rather_than_growing(settings, monkeypatch):
    monkeypatch.setattr(ledger_module, "MAX_PENDING", 2)

    async def scenario() -> int:
        ledger = Ledger()
        ledger.configure(settings)
        for n in range(5):
            ledger.record(record(f"r{n}"))
        held = len(ledger.pending)
        await ledger.close()
        return held

    assert asyncio.run(scenario()) == 2 and len(stored(settings)) == 2


def test_sqlite_keeps_a_private_file_a_month(tmp_path):
    settings = LedgerSettings(tmp_path, 400)
    written(settings, record("a"), record("b", JANUARY))
    assert month_file(tmp_path, DECEMBER).name == "ledger-2026-12.sqlite"
    assert {p.name for p in tmp_path.glob("*.sqlite")} == {"ledger-2026-12.sqlite", "ledger-2027-01.sqlite"}
    assert stat.S_IMODE(month_file(tmp_path, DECEMBER).stat().st_mode) == 0o600


def test_a_postgres_that_cannot_be_reached_is_a_store_error_that_names_no_password():
    store = PostgresLedgerStore("postgresql://hapax:hunter2@127.0.0.1:9/postgres")
    with pytest.raises(LedgerStoreError) as caught:
        store.write([])
    assert "hunter2" not in str(caught.value)


def test_cost_is_from_the_price_table_and_unknown_counts_cost_nothing():
    assert cost_usd((1.0, 2.0), 1_000_000, 500_000) == 2.0
    assert cost_usd(None, 10, 10) == 0.0 and cost_usd((1.0, 2.0), None, None) == 0.0


def test_without_a_ledger_section_nothing_is_kept(tmp_path: Path):
    async def scenario() -> list[LedgerRecord]:
        ledger = Ledger()
        ledger.record(record("a"))
        return ledger.pending

    assert asyncio.run(scenario()) == [] and not list(tmp_path.iterdir())


# The first release's columns: those before the experiment's.
FIRST_RELEASE_COLUMNS = wire.LEDGER_COLUMNS[:[name for name, _ in wire.LEDGER_COLUMNS].index("experiment")]


def _first_release_store(settings: LedgerSettings, *records: LedgerRecord) -> None:
    """A month's file, or the table, as the first release created and wrote it."""
    names = [name for name, _ in FIRST_RELEASE_COLUMNS]
    rows = [astuple(r)[:len(names)] for r in records]
    if settings.store:
        import psycopg

        columns = ", ".join(f"{name} {_postgres_type(kind)}" for name, kind in FIRST_RELEASE_COLUMNS)
        with psycopg.connect(settings.store, autocommit=True) as db:
            db.execute(f"CREATE TABLE {wire.LEDGER_TABLE} ({columns})")
            db.cursor().executemany(f"INSERT INTO {wire.LEDGER_TABLE} VALUES ({', '.join(['%s'] * len(names))})",
                                    rows)
        return
    assert settings.directory is not None
    settings.directory.mkdir()
    with sqlite3.connect(month_file(settings.directory, DECEMBER)) as db:
        db.execute(f"CREATE TABLE {wire.LEDGER_TABLE} ({', '.join(f'{n} {k}' for n, k in FIRST_RELEASE_COLUMNS)})")
        db.executemany(f"INSERT INTO {wire.LEDGER_TABLE} VALUES ({', '.join('?' * len(names))})", rows)
    db.close()


def _columns(settings: LedgerSettings) -> list[str]:
    if settings.store:
        import psycopg

        with psycopg.connect(settings.store) as db:
            return [row[0] for row in db.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", (wire.LEDGER_TABLE,))]
    assert settings.directory is not None
    with sqlite3.connect(month_file(settings.directory, DECEMBER)) as db:
        names = [row[1] for row in db.execute(f"PRAGMA table_info({wire.LEDGER_TABLE})")]
    db.close()
    return names


def _by_experiment(settings: LedgerSettings) -> dict[tuple[str, ...], int]:
    """``hapax report --by experiment,variant`` for December: each group's requests."""
    period = Period(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    by = ("experiment", "variant")
    if settings.store:
        report = read_postgres_report(settings.store, period, by)
    else:
        assert settings.directory is not None
        report = read_report(settings.directory, period, by)
    return {group: totals.requests for group, totals in report.groups()}


def test_a_store_the_first_release_created_is_reported_and_gets_the_new_columns_keeping_its_records(settings):
    _first_release_store(settings, record("old-1"), record("old-2", DECEMBER - 60))
    # Read as it is (read-only): a column it lacks is empty for all its records.
    assert _by_experiment(settings) == {("(none)", "(none)"): 2}
    # A gateway of this release opens it to write: the columns are added, empty for the old records.
    written(settings, record("new", experiment="summary-test", variant="b", region="eu"))
    assert _columns(settings) == [name for name, _ in wire.LEDGER_COLUMNS]
    assert stored(settings) == [("new", DECEMBER), ("old-1", DECEMBER), ("old-2", DECEMBER - 60)]
    assert _by_experiment(settings) == {("summary-test", "b"): 1, ("(none)", "(none)"): 2}
