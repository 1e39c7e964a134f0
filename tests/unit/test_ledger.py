"""The cost ledger's writer: batched, once per request, one file a month, bounded, pruned by age."""

from __future__ import annotations

import asyncio
import calendar
import sqlite3
import stat
from pathlib import Path

from ext_proc import ledger as ledger_module
from ext_proc.ledger import Ledger, LedgerRecord, cost_usd, labels_json, month_file, prune
from ext_proc.runtime import LedgerSettings
from hapax import wire

DECEMBER = calendar.timegm((2026, 12, 31, 23, 59, 59))
JANUARY = calendar.timegm((2027, 1, 1, 0, 0, 1))


def record(request_id: str, when: float = DECEMBER, **fields) -> LedgerRecord:
    values = dict(time=when, request_id=request_id, route="/v1/chat/completions",
                  labels=labels_json({"department": "search"}), key_id="", client="", provider="openai",
                  model="gpt-4o-mini", input_tokens=10, output_tokens=5, cached_tokens=None,
                  cost_usd=cost_usd((1.0, 2.0), 10, 5), price_version="v1", status=200, outcome="success")
    values.update(fields)
    return LedgerRecord(**values)


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT request_id, time FROM {wire.LEDGER_TABLE} ORDER BY request_id").fetchall()


def written(directory: Path, *records: LedgerRecord) -> Ledger:
    async def scenario() -> Ledger:
        ledger = Ledger()
        ledger.configure(LedgerSettings(directory, 400))
        for r in records:
            ledger.record(r)
        await ledger.close()
        return ledger

    return asyncio.run(scenario())


def test_records_land_in_their_months_file_once_each(tmp_path):
    written(tmp_path, record("a"), record("b", JANUARY), record("a"))  # "a" twice: still one record
    assert rows(month_file(tmp_path, DECEMBER)) == [("a", DECEMBER)]
    assert rows(month_file(tmp_path, JANUARY)) == [("b", JANUARY)]
    assert month_file(tmp_path, DECEMBER).name == "ledger-2026-12.sqlite"
    assert stat.S_IMODE(month_file(tmp_path, DECEMBER).stat().st_mode) == 0o600


def test_cost_is_from_the_price_table_and_unknown_counts_cost_nothing():
    assert cost_usd((1.0, 2.0), 1_000_000, 500_000) == 2.0
    assert cost_usd(None, 10, 10) == 0.0 and cost_usd((1.0, 2.0), None, None) == 0.0


def test_a_full_batch_drops_and_counts_rather_than_growing(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "MAX_PENDING", 2)

    async def scenario() -> tuple[int, Ledger]:
        ledger = Ledger()
        ledger.configure(LedgerSettings(tmp_path, 400))
        for n in range(5):
            ledger.record(record(f"r{n}"))
        held = len(ledger.pending)
        await ledger.close()
        return held, ledger

    held, _ = asyncio.run(scenario())
    assert held == 2 and len(rows(month_file(tmp_path, DECEMBER))) == 2


def test_without_a_ledger_section_nothing_is_kept(tmp_path):
    async def scenario() -> list[LedgerRecord]:
        ledger = Ledger()
        ledger.record(record("a"))
        return ledger.pending

    assert asyncio.run(scenario()) == [] and not list(tmp_path.iterdir())


def test_months_past_the_retention_are_deleted_whole(tmp_path):
    written(tmp_path, record("old", calendar.timegm((2026, 11, 15, 0, 0, 0))), record("new"))
    # On 2027-01-15, 30 days' retention reaches back to 2026-12-16: November ended before, December after.
    gone = prune(LedgerSettings(tmp_path, 30), now=calendar.timegm((2027, 1, 15, 0, 0, 0)))
    assert [p.name for p in gone] == ["ledger-2026-11.sqlite"]
    assert sorted(p.name for p in tmp_path.glob("ledger-*.sqlite")) == ["ledger-2026-12.sqlite"]
