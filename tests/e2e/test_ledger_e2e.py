"""The cost ledger through the real gateway: one record per request, exact, and kept across a restart.

A known traffic mix (the passthrough lane, a translated answer, a stream, a failover, a client
error) makes exactly one record each, with the tokens the answers reported and their cost from the
price table; the records' cost adds up to hapax_cost_usd_total; a second gateway on the same
ledger finds them all. SQLite files and a real PostgreSQL pass the same test.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hapax import wire
from hapax.cli import main
from hapax.fakes import FakeAnthropic, FakeOpenAI
from hapax.fakes.faults import Status
from tests.conftest import gateway_config, wait_for
from tests.postgres_server import running_postgres
from tests.raw_http import post_chat

PRICES = {"gpt-4o-mini": {"input": 1.0, "output": 2.0}, "claude-3-5-haiku-latest": {"input": 3.0, "output": 4.0}}


def records(ledger: dict) -> list[dict]:
    """Every record of the ledger configured so, SQLite files or PostgreSQL."""
    if "store" in ledger:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(ledger["store"], row_factory=dict_row) as db:
            try:
                return list(db.execute(f"SELECT * FROM {wire.LEDGER_TABLE}"))
            except psycopg.errors.UndefinedTable:
                return []
    rows: list[dict] = []
    for path in sorted(Path(ledger["directory"]).glob("ledger-*.sqlite")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            try:
                rows += [dict(row) for row in db.execute(f"SELECT * FROM {wire.LEDGER_TABLE}")]
            except sqlite3.OperationalError:  # a month's file a writer has just created, its table not yet
                continue
    return rows


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path) -> Iterator[dict]:
    if request.param == "sqlite":
        yield {"directory": str(tmp_path / "ledger")}
        return
    with running_postgres() as server:
        yield {"store": server.url}


@pytest.fixture(scope="module")
def fakes(fake_host):
    openai_fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    anthropic_fake = fake_host.start(FakeAnthropic(api_key="k", model="claude-3-5-haiku-latest"))
    yield openai_fake, anthropic_fake
    fake_host.run(openai_fake.stop())
    fake_host.run(anthropic_fake.stop())


def ledger_config(fakes, ledger: dict) -> dict:
    openai_fake, anthropic_fake = fakes
    config = gateway_config(
        {"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k", "base_url": openai_fake.base_url},
         "anthropic": {"type": "anthropic", "model": "claude-3-5-haiku-latest", "api_key": "k",
                       "base_url": anthropic_fake.base_url}},
        routes=[{"path": "/v1/chat/completions", "handler": "chat", "metrics_labels": {"department": "search"}}])
    config["pricing"] = PRICES
    config["ledger"] = ledger
    return config


def chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "count the records"}], **fields}


def usage_of(answer) -> dict:
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[5:]) for line in answer.body.decode().splitlines()
                  if line.startswith("data:") and "[DONE]" not in line]
        return next(e["usage"] for e in events if e.get("usage"))
    return answer.json()["usage"]


def assert_report_reconciles(ledger: dict, rows: list[dict], metric_cost: float, tmp_path: Path, capsys) -> None:
    """`hapax report` on the same ledger: its total is the records' and the metrics' cost, and so are its
    CSV's and its Parquet file's, in FOCUS's columns."""
    import pyarrow.parquet as pq

    today = time.strftime("%Y-%m-%d", time.gmtime())
    out_csv, out_parquet = tmp_path / "report.csv", tmp_path / "report.parquet"
    assert main(["report", "--ledger", ledger.get("store") or ledger["directory"], "--since", today, "--until", today,
                 "--csv", str(out_csv), "--parquet", str(out_parquet)]) == 0
    table = capsys.readouterr().out
    total = next(line for line in table.splitlines() if line.startswith("total")).split()
    assert total[1] == str(len(rows)) and float(total[-1]) == pytest.approx(metric_cost, abs=1e-4)
    with out_csv.open() as f:
        csv_rows = list(csv.DictReader(f))
    assert {"BilledCost", "EffectiveCost", "ChargePeriodStart", "ConsumedQuantity", "x_department"} <= set(csv_rows[0])
    assert sum(float(r["BilledCost"]) for r in csv_rows) == pytest.approx(metric_cost)
    assert {r["x_department"] for r in csv_rows} == {"search"}
    parquet_rows = pq.read_table(out_parquet).to_pylist()
    assert list(parquet_rows[0]) == list(csv_rows[0])
    assert sum(r["BilledCost"] for r in parquet_rows) == pytest.approx(metric_cost)
    assert sum(r["x_requests"] for r in parquet_rows) == len(rows)
    assert {r["x_department"] for r in parquet_rows} == {"search"}


def test_every_request_makes_one_exact_record_and_a_restart_keeps_them(fakes, ledger, start_gateway, tmp_path,
                                                                         capsys):
    openai_fake, anthropic_fake = fakes
    gateway = start_gateway(ledger_config(fakes, ledger))
    openai_fake.reset()
    answers = {
        "passthrough": post_chat(gateway, chat("gpt-4o-mini")),
        "translated": post_chat(gateway, chat("claude-3-5-haiku-latest")),
        "stream": post_chat(gateway, chat("gpt-4o-mini", stream=True, stream_options={"include_usage": True})),
        "client_error": post_chat(gateway, b'{"model": "gpt-4o-mini", "messages": '),
    }
    openai_fake.inject(Status(500), times=1, method="POST")  # openai fails once: the request fails over
    answers["failover"] = post_chat(gateway, chat("gpt-4o-mini"))
    assert {name: a.status for name, a in answers.items()} == {
        "passthrough": 200, "translated": 200, "stream": 200, "client_error": 400, "failover": 200}

    wait_for(lambda: len(records(ledger)) >= len(answers), "every request's record")
    time.sleep(1.0)  # nothing more comes
    rows = records(ledger)
    assert len(rows) == len(answers) and len({r["request_id"] for r in rows}) == len(answers)
    by_outcome: dict[str, list[dict]] = {}
    for row in rows:
        by_outcome.setdefault(row["outcome"], []).append(row)
    assert sorted((k, len(v)) for k, v in by_outcome.items()) == [("client_error", 1), ("failed_over", 1),
                                                                  ("success", 3)]
    for name in ("passthrough", "translated", "stream", "failover"):
        usage = usage_of(answers[name])
        matching = [r for r in rows if (r["input_tokens"], r["output_tokens"]) ==
                    (usage["prompt_tokens"], usage["completion_tokens"]) and r["status"] == 200]
        assert matching, (name, usage, rows)
    for row in rows:
        assert json.loads(row["labels"]) == {"department": "search"} and row["route"] == "/v1/chat/completions"
        if row["status"] == 200:
            price = PRICES[row["model"]]
            expected = (row["input_tokens"] * price["input"] + row["output_tokens"] * price["output"]) / 1e6
            assert row["cost_usd"] == pytest.approx(expected)
    assert {r["provider"] for r in rows if r["outcome"] == "failed_over"} == {"anthropic"}
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(gateway.metric_total("hapax_cost_usd_total"))
    assert gateway.metric_total("hapax_ledger_records_total", result="written") == len(answers)
    assert_report_reconciles(ledger, rows, gateway.metric_total("hapax_cost_usd_total"), tmp_path, capsys)

    gateway.stop()
    again = start_gateway(ledger_config(fakes, ledger))
    post_chat(again, chat("gpt-4o-mini"))
    wait_for(lambda: len(records(ledger)) == len(answers) + 1, "the new gateway's record beside the old")
