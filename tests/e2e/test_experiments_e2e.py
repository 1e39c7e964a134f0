"""A/B model experiments through the real gateway: weighted, sticky, stable across a weight change.

Envoy assigns the requests it routes from their body (weighted clusters, its own xxHash64 of
the sticky header); the router step assigns the ones it routes (a ``dedup`` route) with the same
hash. Each proof below compares Envoy's assignments with ext_proc/experiments.py's prediction,
so the two can never drift apart unnoticed.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from ext_proc.experiments import Experiment, Variant
from hapax import wire
from hapax.fakes import FakeAnthropic, FakeOpenAI
from hapax.fakes.faults import Status
from tests.conftest import gateway_config, wait_for
from tests.raw_http import Answer, connect, send

USERS = 1000
PRICES = {"gpt-4o-mini": {"input": 1.0, "output": 2.0}, "gpt-4o": {"input": 5.0, "output": 10.0},
          "claude-3-5-haiku-latest": {"input": 3.0, "output": 4.0}}
DEDUP_PATH = "/v1/dedup/chat/completions"


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(FakeOpenAI(api_key="k", model="gpt-4o-mini"),
                           FakeAnthropic(api_key="k", model="claude-3-5-haiku-latest")) as fakes:
        yield fakes


def experiment_config(fakes, ledger: Path, weights: tuple[int, int] = (90, 10)) -> dict:
    openai_fake, anthropic_fake = fakes
    config = gateway_config(
        {"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k", "base_url": openai_fake.base_url,
                    "models": {"gpt-4o-mini": {}, "gpt-4o": {}}},
         "anthropic": {"type": "anthropic", "model": "claude-3-5-haiku-latest", "api_key": "k",
                       "base_url": anthropic_fake.base_url}},
        preference=["anthropic", "openai"],
        routes=[{"path": "/v1/chat/completions", "handler": "chat", "metrics_labels": {"department": "search"}},
                {"path": DEDUP_PATH, "handler": "chat", "dedup": "always"}])
    config["experiments"] = {"summary-test": {
        "model": "summary", "sticky_by": "header x-user-id",
        "variants": {"a": {"provider": "anthropic", "weight": weights[0]},
                     "b": {"provider": "openai", "model": "gpt-4o", "weight": weights[1]}}}}
    config["pricing"] = PRICES
    config["ledger"] = {"directory": str(ledger)}
    return config


def predicted(weights: tuple[int, int]) -> Experiment:
    """What ext_proc's router step assigns with these weights (buckets as the control plane makes them)."""
    a, b = (round(w * wire.EXPERIMENT_BUCKETS / sum(weights)) for w in weights)
    return Experiment("summary-test", "summary", frozenset(), "x-user-id", (
        Variant("summary-test", "a", "anthropic", "claude-3-5-haiku-latest", "chain.anthropic", a),
        Variant("summary-test", "b", "openai", "gpt-4o", "chain.openai", b)))


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway, tmp_path_factory):
    return start_gateway(experiment_config(fakes, tmp_path_factory.mktemp("ledger")))


def ask(gateway, user: str | None, connection: http.client.HTTPConnection | None = None,
        path: str = "/v1/chat/completions", **fields) -> Answer:
    body = {"model": "summary", "messages": [{"role": "user", "content": "summarise"}], **fields}
    return send(gateway, "POST", path, body, {"x-user-id": user} if user is not None else {}, connection)


def assignments(gateway, users: list[str], path: str = "/v1/chat/completions") -> dict[str, str]:
    """Each user's variant, as the answers say; every answer a 200."""
    connection = connect(gateway)
    try:
        answers = {user: ask(gateway, user, connection, path) for user in users}
    finally:
        connection.close()
    assert {a.status for a in answers.values()} == {200}, [a.body for a in answers.values() if a.status != 200][:3]
    return {user: a.headers[wire.VARIANT_HEADER] for user, a in answers.items()}


def served(gateway, variant: str, **labels: str) -> float:
    return gateway.metric_total("hapax_requests_total", experiment="summary-test", variant=variant, **labels)


def test_a_weighted_split_of_1000_users_lands_within_binomial_tolerance_and_each_user_keeps_their_variant(
        gateway, fakes):
    openai_fake, anthropic_fake = fakes
    openai_fake.reset(), anthropic_fake.reset()
    users = [f"user-{n}" for n in range(USERS)]
    first = assignments(gateway, users)
    counts = {v: sum(1 for x in first.values() if x == v) for v in ("a", "b")}
    # 10 % of 1,000: a standard deviation of 9.5; 4.5 of them either side.
    assert abs(counts["b"] - 100) <= 43 and counts["a"] + counts["b"] == USERS, counts
    # Envoy's assignment is the router step's, user by user: the same hash, the same buckets.
    expected = predicted((90, 10))
    assert first == {user: expected.assign({"x-user-id": user}).name for user in users}
    # Each variant's provider served its requests, and variant b's was sent variant b's model.
    assert len(anthropic_fake.requests) == counts["a"]
    assert [r.body["model"] for r in openai_fake.requests] == ["gpt-4o"] * counts["b"]
    assert all(not k.startswith("x-hapax-") for r in openai_fake.requests + anthropic_fake.requests for k in r.headers)
    # Sticky: the same users again, the same variants.
    assert assignments(gateway, users[:200]) == {user: first[user] for user in users[:200]}
    # Per-variant series add up to the totals.
    wait_for(lambda: served(gateway, "a") + served(gateway, "b") >= USERS + 200, "every answer counted")
    assert served(gateway, "a") == counts["a"] + sum(1 for u in users[:200] if first[u] == "a")
    assert served(gateway, "a") + served(gateway, "b") == gateway.metric_total(
        "hapax_requests_total", route="/v1/chat/completions", experiment="summary-test")


def test_changing_the_weights_moves_only_the_users_whose_bucket_changed_hands(fakes, start_gateway, tmp_path):
    gateway = start_gateway(experiment_config(fakes, tmp_path / "ledger"))
    users = [f"mover-{n}" for n in range(300)]
    before = assignments(gateway, users)
    gateway.config_path.write_text(yaml.safe_dump(experiment_config(fakes, tmp_path / "ledger", (80, 20))))
    wait_for(lambda: ask(gateway, "probe-for-reload").headers.get(wire.VARIANT_HEADER) is not None
             and _weights_served(gateway) == (8000, 2000), "the new weights in Envoy's routes")
    after = assignments(gateway, users)
    moved = {u for u in users if before[u] != after[u]}
    buckets = {u: _bucket(u) for u in users}
    assert moved == {u for u in users if 8000 <= buckets[u] < 9000}
    assert all(before[u] == "a" and after[u] == "b" for u in moved)  # nobody moves the other way
    assert after == {u: predicted((80, 20)).assign({"x-user-id": u}).name for u in users}


def _bucket(user: str) -> int:
    from ext_proc.experiments import xxh64

    return xxh64(user.encode()) % wire.EXPERIMENT_BUCKETS


def _weights_served(gateway) -> tuple[int, ...]:
    """The experiment route's weights in Envoy's own route table (its admin's config dump)."""
    dump = json.loads(gateway.admin("/config_dump?resource=dynamic_route_configs"))
    for config in dump["configs"]:
        for host in config["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                if route.get("name", "").startswith("experiment.summary-test:"):
                    return tuple(int(c["weight"]) for c in route["route"]["weighted_clusters"]["clusters"])
    return ()


def test_the_router_step_assigns_a_dedup_routes_requests_as_envoy_does(gateway):
    users = [f"dedup-user-{n}" for n in range(60)]
    routed_by_envoy = assignments(gateway, users)
    routed_by_the_router_step = assignments(gateway, users, DEDUP_PATH)
    assert routed_by_the_router_step == routed_by_envoy
    assert set(routed_by_envoy.values()) == {"a", "b"}  # both variants were exercised


def test_a_variant_fails_over_along_its_own_chain_and_stays_its_variants(gateway, fakes, tmp_path):
    openai_fake, anthropic_fake = fakes
    user = next(f"failing-{n}" for n in range(100) if predicted((90, 10)).assign({"x-user-id": f"failing-{n}"}).name
                == "a")
    openai_fake.reset()
    anthropic_fake.inject(Status(500), times=1, method="POST")
    answer = ask(gateway, user)
    assert answer.status == 200 and answer.headers[wire.VARIANT_HEADER] == "a"
    # Failed over to openai: sent its own first chat model, not variant b's.
    assert [r.body["model"] for r in openai_fake.requests] == ["gpt-4o-mini"]
    wait_for(lambda: served(gateway, "a", outcome="failed_over", provider="openai", model="gpt-4o-mini") == 1,
             "the failover counted under variant a")


def test_a_stream_is_counted_and_recorded_under_its_variant(gateway, fakes):
    user = next(f"streamer-{n}" for n in range(100)
                if predicted((90, 10)).assign({"x-user-id": f"streamer-{n}"}).name == "b")
    started = time.time()
    answer = ask(gateway, user, stream=True, stream_options={"include_usage": True})
    assert answer.status == 200 and answer.headers[wire.VARIANT_HEADER] == "b"
    events = [json.loads(line[5:]) for line in answer.body.decode().splitlines()
              if line.startswith("data:") and "[DONE]" not in line]
    usage = next(e["usage"] for e in events if e.get("usage"))
    record = wait_for_record(gateway, since=started)
    assert (record["experiment"], record["variant"], record["provider"], record["model"]) == (
        "summary-test", "b", "openai", "gpt-4o")
    assert (record["input_tokens"], record["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert record["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 5 + usage["completion_tokens"] * 10) / 1e6)
    assert json.loads(record["labels"]) == {"department": "search"}  # the experiment is in its own columns


def wait_for_record(gateway, since: float) -> dict:
    """The one ledger record of a request started after ``since`` (the tests send one at a time)."""
    directory = Path(yaml.safe_load(gateway.config_path.read_text())["ledger"]["directory"])
    found: list[dict] = []

    def lookup() -> bool:
        found.clear()
        for path in directory.glob("ledger-*.sqlite"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                db.row_factory = sqlite3.Row
                found.extend(dict(r) for r in db.execute(
                    f"SELECT * FROM {wire.LEDGER_TABLE} WHERE time >= ?", (since,)))
        return bool(found)

    wait_for(lookup, "the request's ledger record")
    time.sleep(0.6)  # a second record would come within a flush
    lookup()
    assert len(found) == 1, found
    return found[0]


def test_a_client_cannot_claim_a_variant_outside_an_experiment(gateway, fakes):
    openai_fake, _ = fakes
    openai_fake.reset()
    before = served(gateway, "b")
    answer = send(gateway, "POST", "/v1/chat/completions",
                  {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                  {wire.EXPERIMENT_HEADER: "summary-test", wire.VARIANT_HEADER: "b"})
    assert answer.status == 200 and wire.VARIANT_HEADER not in answer.headers
    assert [r.body["model"] for r in openai_fake.requests] == ["gpt-4o-mini"]
    assert all(not k.startswith("x-hapax-") for k in openai_fake.requests[0].headers)
    time.sleep(0.6)  # an access log flush
    assert served(gateway, "b") == before


def test_messages_and_responses_clients_are_in_the_experiment_each_answered_in_its_own_api(gateway, fakes):
    """The same users on the Messages and Responses APIs: Envoy gives each the variant it gives their chats,
    each variant's provider is sent the variant's model, and every answer is in the client's API."""
    openai_fake, anthropic_fake = fakes
    users = [f"api-user-{n}" for n in range(60)]
    expected = {user: predicted((90, 10)).assign({"x-user-id": user}).name for user in users}
    assert set(expected.values()) == {"a", "b"}  # both variants are exercised
    for path, body, kind in (
            ("/v1/messages", {"model": "summary", "max_tokens": 32,
                              "messages": [{"role": "user", "content": "summarise"}]}, "message"),
            ("/v1/responses", {"model": "summary", "input": "summarise"}, "response")):
        openai_fake.reset(), anthropic_fake.reset()
        connection = connect(gateway)
        try:
            answers = {user: send(gateway, "POST", path, body, {"x-user-id": user}, connection) for user in users}
        finally:
            connection.close()
        assert {a.status for a in answers.values()} == {200}, path
        assert {user: a.headers[wire.VARIANT_HEADER] for user, a in answers.items()} == expected, path
        assert {(a.json().get("type") or a.json().get("object")) for a in answers.values()} == {kind}, path
        asked = [r for r in openai_fake.requests if r.method == "POST"]  # not the health checks
        assert [r.body["model"] for r in asked] == ["gpt-4o"] * sum(1 for v in expected.values() if v == "b"), path
        assert len([r for r in anthropic_fake.requests if r.method == "POST"]) == sum(
            1 for v in expected.values() if v == "a"), path
    # The Responses API's variant b went to OpenAI as the client wrote it, its model aside.
    assert {r.path for r in asked} == {"/v1/responses"}
