"""`hapax report`: the cost ledger's monthly SQLite files, added up by label or column."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hapax import wire
from hapax.cli import main
from hapax.focus import FOCUS_COLUMNS, column_type
from hapax.ledger_report import GROUP_COLUMNS


def _ledger_file(directory: Path, year: int, month: int) -> Path:
    return directory / wire.LEDGER_FILE_PATTERN.format(year=year, month=month)


def _create(path: Path) -> sqlite3.Connection:
    """The writer's side: the table made from wire.LEDGER_COLUMNS, in WAL mode."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    columns = ", ".join(f"{name} {sql_type}" for name, sql_type in wire.LEDGER_COLUMNS)
    connection.execute(f"CREATE TABLE IF NOT EXISTS {wire.LEDGER_TABLE} ({columns})")
    return connection


def _insert(connection: sqlite3.Connection, record: dict) -> None:
    names = [name for name, _ in wire.LEDGER_COLUMNS]
    connection.execute(f"INSERT INTO {wire.LEDGER_TABLE} VALUES ({', '.join('?' * len(names))})",
                       [record[name] for name in names])


def _record(when: str, labels: dict, provider: str, model: str, tokens: tuple[int | None, int | None],
            cost: float, experiment: str = "", variant: str = "") -> dict:
    start = datetime.fromisoformat(when).replace(tzinfo=UTC)
    return {"time": start.timestamp(), "request_id": f"{when}-{provider}-{model}", "route": "/v1/chat/completions",
            "labels": json.dumps(labels), "key_id": "0123456789ab", "client": "search-app",
            "provider": provider, "model": model, "input_tokens": tokens[0], "output_tokens": tokens[1],
            "cached_tokens": None, "cost_usd": cost, "price_version": "v1", "status": 200, "outcome": "success",
            "experiment": experiment, "variant": variant, "region": ""}


SEARCH, ADS = {"department": "search", "team": "ranking"}, {"department": "ads"}
# November and December 2026; the report's period below is 2026-11-30 and 2026-12-01.
RECORDS = {
    (2026, 11): [
        _record("2026-11-29T12:00:00", SEARCH, "openai", "gpt-4o", (100, 50), 0.001),  # the day before
        _record("2026-11-30T10:00:00", ADS, "anthropic", "claude-sonnet", (300, 100), 0.004),
        _record("2026-11-30T23:59:59", SEARCH, "openai", "gpt-4o", (1000, 200), 0.0125),
    ],
    (2026, 12): [
        _record("2026-12-01T00:00:00", SEARCH, "anthropic", "claude-sonnet", (2000, 500), 0.03),
        _record("2026-12-01T08:00:00", ADS, "openai", "gpt-4o-mini", (None, None), 0.0),  # usage not reported
        _record("2026-12-01T09:00:00", {"team": "infra"}, "openai", "gpt-4o-mini", (10, 5), 0.0001),  # no department
        _record("2026-12-01T10:00:00", SEARCH, "", "", (None, None), 0.0),  # rejected: no provider answered
        _record("2026-12-01T11:00:00", SEARCH, "openai", "gpt-4o", (100, 20), 0.0015),
        _record("2026-12-02T00:00:00", SEARCH, "openai", "gpt-4o", (5000, 5000), 1.0),  # the day after
    ],
}
PERIOD = ["--since", "2026-11-30", "--until", "2026-12-01"]


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    directory = tmp_path / "ledger"
    directory.mkdir()
    for (year, month), records in RECORDS.items():
        connection = _create(_ledger_file(directory, year, month))
        for record in records:
            _insert(connection, record)
        connection.close()
    # Months outside the period: not SQLite at all, so opening either would fail the report.
    _ledger_file(directory, 2026, 10).write_text("not a ledger")
    _ledger_file(directory, 2027, 1).write_text("not a ledger")
    return directory


def _report(capsys, *argv: str) -> tuple[int, list[list[str]], str]:
    """Exit code, the table's rows split on runs of spaces (header first), stderr."""
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    return code, [line.split() for line in lines[1:]], err


def test_the_table_adds_up_each_department_over_both_months_costliest_first(ledger, capsys):
    code, rows, err = _report(capsys, "--ledger", str(ledger), *PERIOD)
    assert code == 0, err
    assert rows == [
        ["department", "requests", "input", "tokens", "output", "tokens", "unknown", "usage", "cost", "(USD)"],
        ["search", "4", "3,100", "720", "1", "0.0440"],
        ["ads", "2", "300", "100", "1", "0.0040"],
        ["(none)", "1", "10", "5", "0", "0.0001"],
        ["total", "7", "3,410", "825", "2", "0.0481"],
    ]


def test_the_report_says_which_period_and_files_it_read(ledger, capsys):
    main(["report", "--ledger", str(ledger), *PERIOD])
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("Requests from 2026-11-30 00:00 to 2026-12-02 00:00 UTC "
                     "(ledger-2026-11.sqlite, ledger-2026-12.sqlite), by department:")


def test_the_period_ends_with_the_until_day_and_reads_only_its_months(ledger, capsys):
    # The last second of November is in; December's first record is not; October's and
    # January's files (not SQLite) are never opened.
    code, rows, err = _report(capsys, "--ledger", str(ledger), "--since", "2026-11-01", "--until", "2026-11-30")
    assert code == 0, err
    assert rows[1:] == [["search", "2", "1,100", "250", "0", "0.0135"],
                        ["ads", "1", "300", "100", "0", "0.0040"],
                        ["total", "3", "1,400", "350", "0", "0.0175"]]


def test_by_model_groups_on_the_column_and_a_request_no_provider_answered_under_none(ledger, capsys):
    code, rows, err = _report(capsys, "--ledger", str(ledger), *PERIOD, "--by", "model")
    assert code == 0, err
    assert rows[0][0] == "model"
    assert rows[1:] == [["claude-sonnet", "2", "2,300", "600", "0", "0.0340"],
                        ["gpt-4o", "2", "1,100", "220", "0", "0.0140"],
                        ["gpt-4o-mini", "2", "10", "5", "1", "0.0001"],
                        ["(none)", "1", "0", "0", "1", "0.0000"],
                        ["total", "7", "3,410", "825", "2", "0.0481"]]


def test_a_request_missing_one_token_count_is_unknown_usage_and_its_other_count_still_adds_up(tmp_path, capsys):
    connection = _create(_ledger_file(tmp_path, 2026, 12))
    _insert(connection, _record("2026-12-01T10:00:00", SEARCH, "ollama", "llama3", (40, None), 0.0))
    _insert(connection, _record("2026-12-01T11:00:00", SEARCH, "ollama", "llama3", (None, 7), 0.0))
    connection.close()
    code, rows, err = _report(capsys, "--ledger", str(tmp_path), *PERIOD)
    assert code == 0, err
    assert rows[1] == ["search", "2", "40", "7", "2", "0.0000"]


def test_two_keys_group_by_both_and_any_label_can_be_one(ledger, capsys):
    code, rows, err = _report(capsys, "--ledger", str(ledger), *PERIOD, "--by", "team", "--by", "provider")
    assert code == 0, err
    assert rows[0][:2] == ["team", "provider"]
    assert rows[1:] == [["ranking", "anthropic", "1", "2,000", "500", "0", "0.0300"],
                        ["ranking", "openai", "2", "1,100", "220", "0", "0.0140"],
                        ["(none)", "anthropic", "1", "300", "100", "0", "0.0040"],
                        ["infra", "openai", "1", "10", "5", "0", "0.0001"],
                        ["(none)", "openai", "1", "0", "0", "1", "0.0000"],
                        ["ranking", "(none)", "1", "0", "0", "1", "0.0000"],
                        ["total", "7", "3,410", "825", "2", "0.0481"]]


def test_the_csv_has_focus_columns_and_a_row_per_group_and_utc_day(ledger, capsys, tmp_path):
    out = tmp_path / "costs.csv"
    assert main(["report", "--ledger", str(ledger), *PERIOD, "--csv", str(out)]) == 0
    assert capsys.readouterr().err == f"Wrote 5 rows (a group's day each) to {out}\n"
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header == ["BilledCost", "BillingCurrency", "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart",
                      "ConsumedQuantity", "ConsumedUnit", "EffectiveCost", "ProviderName", "ServiceName",
                      "ServiceProviderName", "x_department", "x_input_tokens", "x_output_tokens", "x_requests"]
    constant = {"BillingCurrency": "USD", "ChargeCategory": "Usage", "ConsumedUnit": "Tokens",
                "ServiceName": "Hapax LLM gateway"}
    assert all({k: row[k] for k in constant} == constant for row in rows)
    by_day = [{k: v for k, v in row.items() if k not in constant and k != "ServiceProviderName"} for row in rows]
    nov30 = {"ChargePeriodStart": "2026-11-30T00:00:00Z", "ChargePeriodEnd": "2026-12-01T00:00:00Z"}
    dec1 = {"ChargePeriodStart": "2026-12-01T00:00:00Z", "ChargePeriodEnd": "2026-12-02T00:00:00Z"}
    assert by_day == [
        {**nov30, "x_department": "ads", "BilledCost": "0.004", "EffectiveCost": "0.004", "ConsumedQuantity": "400",
         "ProviderName": "anthropic", "x_requests": "1", "x_input_tokens": "300", "x_output_tokens": "100"},
        {**nov30, "x_department": "search", "BilledCost": "0.0125", "EffectiveCost": "0.0125",
         "ConsumedQuantity": "1200", "ProviderName": "openai", "x_requests": "1", "x_input_tokens": "1000",
         "x_output_tokens": "200"},
        {**dec1, "x_department": "(none)", "BilledCost": "0.0001", "EffectiveCost": "0.0001",
         "ConsumedQuantity": "15", "ProviderName": "openai", "x_requests": "1", "x_input_tokens": "10",
         "x_output_tokens": "5"},
        {**dec1, "x_department": "ads", "BilledCost": "0", "EffectiveCost": "0", "ConsumedQuantity": "0",
         "ProviderName": "openai", "x_requests": "1", "x_input_tokens": "0", "x_output_tokens": "0"},
        # anthropic, openai and a request no provider answered: the providers are mixed.
        {**dec1, "x_department": "search", "BilledCost": "0.0315", "EffectiveCost": "0.0315",
         "ConsumedQuantity": "2620", "ProviderName": "(mixed)", "x_requests": "3", "x_input_tokens": "2100",
         "x_output_tokens": "520"},
    ]
    assert all(row["ServiceProviderName"] == row["ProviderName"] for row in rows)


def test_a_provider_that_did_not_answer_does_not_mix_the_providers(tmp_path, capsys):
    connection = _create(_ledger_file(tmp_path, 2026, 12))
    _insert(connection, _record("2026-12-01T10:00:00", SEARCH, "", "", (None, None), 0.0))
    _insert(connection, _record("2026-12-01T11:00:00", SEARCH, "anthropic", "claude-sonnet", (10, 10), 0.001))
    connection.close()
    out = tmp_path / "costs.csv"
    assert main(["report", "--ledger", str(tmp_path), *PERIOD, "--csv", str(out)]) == 0
    with out.open(newline="") as f:
        assert [row["ProviderName"] for row in csv.DictReader(f)] == ["anthropic"]


def test_the_csv_has_a_custom_column_per_group_key(ledger, capsys, tmp_path):
    out = tmp_path / "costs.csv"
    assert main(["report", "--ledger", str(ledger), *PERIOD, "--by", "model", "--by", "team",
                 "--csv", str(out)]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[:len(FOCUS_COLUMNS)] == list(FOCUS_COLUMNS)
    assert header[len(FOCUS_COLUMNS):] == ["x_input_tokens", "x_model", "x_output_tokens", "x_requests", "x_team"]


def test_a_reader_sees_the_committed_rows_while_a_writer_holds_an_uncommitted_one(ledger, capsys):
    path = _ledger_file(ledger, 2026, 12)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    writer = _create(path)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock
    _insert(writer, _record("2026-12-01T12:00:00", ADS, "openai", "gpt-4o", (1, 1), 5.0))
    try:
        started = time.monotonic()
        code, rows, err = _report(capsys, "--ledger", str(ledger), *PERIOD)
        assert time.monotonic() - started < 2  # it did not wait for the writer
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # nothing written while it read
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert code == 0, err
    assert rows[-1] == ["total", "7", "3,410", "825", "2", "0.0481"]  # not the uncommitted $5
    _, rows, _ = _report(capsys, "--ledger", str(ledger), *PERIOD)
    assert rows[-1] == ["total", "8", "3,411", "826", "2", "5.0481"]  # committed: now counted


def test_the_default_period_is_this_month_to_now(tmp_path, capsys):
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = month_start - timedelta(seconds=1)
    for when, cost in ((month_start, 0.25), (last_month, 0.5)):
        connection = _create(_ledger_file(tmp_path, when.year, when.month))
        _insert(connection, _record(when.replace(tzinfo=None).isoformat(), SEARCH, "openai", "gpt-4o", (1, 1), cost))
        connection.close()
    code, rows, err = _report(capsys, "--ledger", str(tmp_path))
    assert code == 0, err
    assert rows[1:] == [["search", "1", "1", "1", "0", "0.2500"], ["total", "1", "1", "1", "0", "0.2500"]]


def test_no_ledger_file_in_the_period_is_said_and_not_an_error(ledger, capsys, tmp_path):
    out, out_parquet = tmp_path / "costs.csv", tmp_path / "costs.parquet"
    code = main(["report", "--ledger", str(ledger), "--since", "2026-06-01", "--until", "2026-07-31",
                 "--csv", str(out), "--parquet", str(out_parquet)])
    assert code == 0
    assert capsys.readouterr().out == (f"No ledger files for 2026-06-01 00:00 to 2026-08-01 00:00 UTC in {ledger} "
                                       "(looked for ledger-2026-06.sqlite, ledger-2026-07.sqlite).\n")
    header = [*FOCUS_COLUMNS, "x_department", "x_input_tokens", "x_output_tokens", "x_requests"]
    assert out.read_text().splitlines() == [",".join(header)]
    table = pq.read_table(out_parquet)
    assert table.num_rows == 0 and table.column_names == header


def test_a_file_without_requests_in_the_period_is_said(ledger, capsys):
    code = main(["report", "--ledger", str(ledger), "--since", "2026-12-20", "--until", "2026-12-31"])
    assert code == 0
    assert capsys.readouterr().out == "No requests recorded from 2026-12-20 00:00 to 2027-01-01 00:00 UTC " \
                                      "(ledger-2026-12.sqlite).\n"


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("a file")], ids=["missing", "a file"])
def test_a_ledger_directory_that_cannot_be_read_is_an_error(tmp_path, capsys, make):
    directory = tmp_path / "ledger"
    make(directory)
    assert main(["report", "--ledger", str(directory), *PERIOD]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"hapax report: cannot read the ledger directory {directory}: ")


def test_a_ledger_file_that_is_not_sqlite_is_an_error_naming_it(ledger, capsys):
    assert main(["report", "--ledger", str(ledger), "--since", "2026-10-31", "--until", "2026-11-30"]) == 1
    err = capsys.readouterr().err
    assert f"cannot read the ledger file {_ledger_file(ledger, 2026, 10)}" in err


@pytest.mark.parametrize("day", ["2026-13-01", "12/01/2026", "2026-12-1"])
def test_a_malformed_date_is_an_argument_error(ledger, capsys, day):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--ledger", str(ledger), "--since", day])
    assert exit_.value.code == 2
    assert "--since" in capsys.readouterr().err


def test_a_period_that_ends_before_it_starts_is_an_argument_error(ledger, capsys):
    assert main(["report", "--ledger", str(ledger), "--since", "2026-12-02", "--until", "2026-12-01"]) == 2
    assert "is empty" in capsys.readouterr().err


def test_a_group_key_that_is_neither_a_column_nor_a_label_name_is_an_argument_error(ledger, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--ledger", str(ledger), "--by", "cost-center"])
    assert exit_.value.code == 2
    assert "not a column" in capsys.readouterr().err


def test_a_group_key_whose_csv_column_would_be_a_measures_is_an_argument_error(ledger, capsys, tmp_path):
    out = tmp_path / "costs.csv"
    assert main(["report", "--ledger", str(ledger), *PERIOD, "--by", "requests", "--csv", str(out)]) == 2
    assert "x_requests" in capsys.readouterr().err
    assert not out.exists()


def test_a_csv_that_cannot_be_written_is_an_error_after_the_table(ledger, capsys, tmp_path):
    out = tmp_path / "no such directory" / "costs.csv"
    assert main(["report", "--ledger", str(ledger), *PERIOD, "--csv", str(out)]) == 1
    printed, err = capsys.readouterr()
    assert "total" in printed
    assert err.startswith(f"hapax report: cannot write {out}: ")


def test_the_ledgers_dimensions_are_the_group_columns():
    assert GROUP_COLUMNS == ("route", "key_id", "client", "provider", "model", "price_version", "outcome",
                             "experiment", "variant", "region")


# ---------------------------------------------------------------- Parquet

TEXT, COST, COUNT, UTC_TIME = pa.string(), pa.float64(), pa.int64(), pa.timestamp("us", tz="UTC")


def _csv_and_parquet(ledger: Path, tmp_path: Path, *by: str) -> tuple[int, list[dict], pa.Table]:
    out_csv, out_parquet = tmp_path / "costs.csv", tmp_path / "costs.parquet"
    code = main(["report", "--ledger", str(ledger), *PERIOD, *by, "--csv", str(out_csv), "--parquet", str(out_parquet)])
    with out_csv.open(newline="") as f:
        return code, list(csv.DictReader(f)), pq.read_table(out_parquet)


def test_the_parquet_file_has_the_focus_columns_typed(ledger, capsys, tmp_path):
    code, _, table = _csv_and_parquet(ledger, tmp_path, "--by", "department", "--by", "model")
    assert code == 0, capsys.readouterr().err
    assert list(zip(table.schema.names, table.schema.types, strict=True)) == [
        ("BilledCost", COST), ("BillingCurrency", TEXT), ("ChargeCategory", TEXT), ("ChargePeriodEnd", UTC_TIME),
        ("ChargePeriodStart", UTC_TIME), ("ConsumedQuantity", COUNT), ("ConsumedUnit", TEXT), ("EffectiveCost", COST),
        ("ProviderName", TEXT), ("ServiceName", TEXT), ("ServiceProviderName", TEXT), ("x_department", TEXT),
        ("x_input_tokens", COUNT), ("x_model", TEXT), ("x_output_tokens", COUNT), ("x_requests", COUNT)]


def test_the_parquet_file_holds_the_csvs_rows_and_values(ledger, capsys, tmp_path):
    code, csv_rows, table = _csv_and_parquet(ledger, tmp_path)
    assert code == 0
    out = tmp_path / "costs.csv", tmp_path / "costs.parquet"
    assert capsys.readouterr().err == "".join(f"Wrote 5 rows (a group's day each) to {path}\n" for path in out)
    parquet_rows = table.to_pylist()
    parse = {str: str, int: int, float: float, datetime: datetime.fromisoformat}  # "...Z" is UTC
    assert [{k: parse[column_type(k)](v) for k, v in row.items()} for row in csv_rows] == parquet_rows
    assert len(parquet_rows) == 5 and [list(row) for row in csv_rows] == [list(row) for row in parquet_rows]
    # The CSV test's last row, typed: a UTC day, the cost as the CSV writes it.
    assert parquet_rows[-1] | {"ServiceProviderName": None} == {
        "BilledCost": 0.0315, "BillingCurrency": "USD", "ChargeCategory": "Usage",
        "ChargePeriodEnd": datetime(2026, 12, 2, tzinfo=UTC), "ChargePeriodStart": datetime(2026, 12, 1, tzinfo=UTC),
        "ConsumedQuantity": 2620, "ConsumedUnit": "Tokens", "EffectiveCost": 0.0315, "ProviderName": "(mixed)",
        "ServiceName": "Hapax LLM gateway", "ServiceProviderName": None, "x_department": "search",
        "x_input_tokens": 2100, "x_output_tokens": 520, "x_requests": 3}


def test_the_parquet_cost_is_the_csvs_to_ten_decimals(tmp_path, capsys):
    connection = _create(_ledger_file(tmp_path, 2026, 12))
    for n, cost in enumerate((0.1, 0.2, 0.00000000006)):  # 0.1 + 0.2 is 0.30000000000000004 in a float
        _insert(connection, _record(f"2026-12-01T1{n}:00:00", SEARCH, "openai", "gpt-4o", (1, 1), cost))
    connection.close()
    code, csv_rows, table = _csv_and_parquet(tmp_path, tmp_path)
    assert code == 0, capsys.readouterr().err
    assert [row["BilledCost"] for row in csv_rows] == ["0.3000000001"]
    assert table.column("BilledCost").to_pylist() == table.column("EffectiveCost").to_pylist() == [0.3000000001]


def test_the_parquet_totals_are_the_tables(ledger, capsys, tmp_path):
    code, _, table = _csv_and_parquet(ledger, tmp_path)
    assert code == 0
    total = capsys.readouterr().out.splitlines()[-1].split()
    assert total == ["total", "7", "3,410", "825", "2", "0.0481"]
    sums = {name: sum(table.column(name).to_pylist()) for name in
            ("x_requests", "x_input_tokens", "x_output_tokens", "ConsumedQuantity", "BilledCost", "EffectiveCost")}
    assert [f"{sums[name]:,}" for name in ("x_requests", "x_input_tokens", "x_output_tokens")] == total[1:4]
    assert sums["ConsumedQuantity"] == 3410 + 825
    assert f"{sums['BilledCost']:.4f}" == f"{sums['EffectiveCost']:.4f}" == total[-1]
    assert sums["BilledCost"] == pytest.approx(0.0481, abs=1e-12)


def test_without_pyarrow_parquet_fails_before_reading_anything_and_names_the_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` finds when it is not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out_csv, out_parquet = tmp_path / "costs.csv", tmp_path / "costs.parquet"
    assert main(["report", "--ledger", str(tmp_path / "no such ledger"), *PERIOD, "--csv", str(out_csv),
                 "--parquet", str(out_parquet)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no table: the (missing) ledger was not read
    assert err == "hapax report: --parquet needs pyarrow, which is not installed: pip install 'hapax[parquet]'\n"
    assert not out_csv.exists() and not out_parquet.exists()


def test_a_parquet_file_that_cannot_be_written_is_an_error_after_the_table(ledger, capsys, tmp_path):
    out = tmp_path / "no such directory" / "costs.parquet"
    assert main(["report", "--ledger", str(ledger), *PERIOD, "--parquet", str(out)]) == 1
    printed, err = capsys.readouterr()
    assert "total" in printed
    assert err.startswith(f"hapax report: cannot write {out}: ")


def test_a_group_key_whose_parquet_column_would_be_a_measures_is_an_argument_error(ledger, capsys, tmp_path):
    out = tmp_path / "costs.parquet"
    assert main(["report", "--ledger", str(ledger), *PERIOD, "--by", "requests", "--parquet", str(out)]) == 2
    assert "x_requests" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- experiments

def test_by_experiment_and_variant_groups_on_their_columns_and_names_them_in_the_csv(tmp_path, capsys):
    connection = _create(_ledger_file(tmp_path, 2026, 12))
    for when, variant, tokens, cost in (("2026-12-01T10:00:00", "a", (100, 10), 0.002),
                                        ("2026-12-01T11:00:00", "a", (200, 20), 0.004),
                                        ("2026-12-01T12:00:00", "b", (300, 30), 0.009)):
        _insert(connection, _record(when, SEARCH, "openai", "gpt-4o", tokens, cost, "summary-test", variant))
    _insert(connection, _record("2026-12-01T13:00:00", SEARCH, "openai", "gpt-4o", (1, 1), 0.0001))  # none
    connection.close()
    out = tmp_path / "costs.csv"
    code, rows, err = _report(capsys, "--ledger", str(tmp_path), *PERIOD, "--by", "experiment,variant",
                              "--csv", str(out))
    assert code == 0, err
    assert rows[0][:2] == ["experiment", "variant"]
    assert rows[1:] == [["summary-test", "b", "1", "300", "30", "0", "0.0090"],
                        ["summary-test", "a", "2", "300", "30", "0", "0.0060"],
                        ["(none)", "(none)", "1", "1", "1", "0", "0.0001"],
                        ["total", "4", "601", "61", "0", "0.0151"]]
    with out.open(newline="") as f:
        written = [{k: row[k] for k in ("x_experiment", "x_variant", "x_requests", "BilledCost")}
                   for row in csv.DictReader(f)]
    assert written == [{"x_experiment": "(none)", "x_variant": "(none)", "x_requests": "1", "BilledCost": "0.0001"},
                       {"x_experiment": "summary-test", "x_variant": "a", "x_requests": "2", "BilledCost": "0.006"},
                       {"x_experiment": "summary-test", "x_variant": "b", "x_requests": "1", "BilledCost": "0.009"}]
    # The comma-separated keys are the repeated --by's.
    assert _report(capsys, "--ledger", str(tmp_path), *PERIOD, "--by", "experiment", "--by", "variant")[1] == rows


def test_a_comma_separated_by_checks_each_key(ledger, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--ledger", str(ledger), "--by", "experiment,cost-center"])
    assert exit_.value.code == 2
    assert "'cost-center'" in capsys.readouterr().err
