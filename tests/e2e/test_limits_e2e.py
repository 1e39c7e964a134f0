"""Limits and budgets through the real Envoy and ext_proc: reserve, then settle; exact counts.

A token limit that admits k of N concurrent requests admits exactly k, through two gateways
sharing a real Redis, streams included; what a request did not use is released once it
ends; a budget refuses the request that would cross it, and the spend counted is the sum of
the answers' costs; a Redis that is down is the documented choice (open: admitted and
counted, closed: 503).
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from hapax.client_keys import new_key
from hapax.fakes import FakeOpenAI
from hapax.fakes.faults import Latency
from tests.conftest import gateway_config, wait_for
from tests.raw_http import Answer, post_chat, send
from tests.redis_server import running_redis

MAX_TOKENS = 400
# Four bytes a token, as ext_proc/admission.py estimates a request's input.
BYTES_PER_TOKEN = 4


def body(stream: bool = False, max_tokens: int = MAX_TOKENS) -> bytes:
    fields = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say something short"}],
              "max_tokens": max_tokens}
    if stream:
        fields.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(fields).encode()


def reservation(data: bytes, max_tokens: int = MAX_TOKENS) -> int:
    return math.ceil(len(data) / BYTES_PER_TOKEN) + max_tokens


def post(gateway, key: str, data: bytes) -> Answer:
    return post_chat(gateway, data, key)


def total(gateways, name: str, **labels: str) -> float:
    return sum(gateway.metric_total(name, **labels) for gateway in gateways)


@pytest.fixture(scope="module")
def fake(fake_host):
    fake = fake_host.start(FakeOpenAI(api_key="provider-key", model="gpt-4o-mini"))
    yield fake
    fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def limited_config(fake, clients: dict[str, dict], limits: dict | None = None, pricing: dict | None = None) -> dict:
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "provider-key",
                                        "base_url": fake.base_url}})
    config["clients"] = clients
    if limits:
        config["limits"] = limits
    if pricing:
        config["pricing"] = pricing
    return config


def test_concurrent_requests_against_a_token_limit_admit_exactly_k_across_two_gateways(fake, redis, start_gateway):
    key, line = new_key()
    plain, streamed = body(), body(stream=True)
    worst, least = max(reservation(plain), reservation(streamed)), min(reservation(plain), reservation(streamed))
    admits = 4
    # Room for any four requests, for no five: which four win is the race's, how many is not.
    assert (admits + 1) * least > admits * worst
    per_day = admits * worst + ((admits + 1) * least - admits * worst) // 2
    config = limited_config(fake, {"search": {"keys": [line.htpasswd], "limits": {"tokens_per_day": per_day}}},
                            {"store": redis.url})
    gateways = [start_gateway(config), start_gateway(config)]
    fake.reset()
    fake.inject(Latency(3.0), times=None, method="POST")  # every reservation is made before any settles
    try:
        calls = 12
        with ThreadPoolExecutor(calls) as pool:
            answers = list(pool.map(lambda i: post(gateways[i % 2], key, streamed if i % 3 == 0 else plain),
                                    range(calls)))
    finally:
        fake.clear_faults()
    admitted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 429]
    assert len(admitted) == admits and len(refused) == calls - admits, [(a.status, a.body) for a in answers]
    assert len([r for r in fake.requests if r.method == "POST"]) == admits
    for answer in refused:
        assert answer.error()["code"] == "rate_limit_exceeded" and answer.error()["type"] == "tokens"
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.headers["x-ratelimit-limit-tokens"] == str(per_day)
        assert answer.headers["content-type"] == "application/json"
    for answer in admitted:
        assert answer.headers["x-ratelimit-limit-tokens"] == str(per_day)
        assert int(answer.headers["x-ratelimit-remaining-tokens"]) < per_day
    wait_for(lambda: total(gateways, "hapax_admissions_total", result="refused") == calls - admits,
             "the refusals counted")
    assert total(gateways, "hapax_admissions_total", result="admitted") == admits

    # Settled: each answer used far less than its reservation, so the rest came back.
    def fits() -> bool:
        return post(gateways[0], key, plain).status == 200

    wait_for(fits, "a follow-up request to fit once the reservations are settled")


def test_a_budget_refuses_the_request_that_would_cross_it_and_spend_is_the_answers_cost(fake, start_gateway):
    key, line = new_key()
    data = body()
    fake.reset()
    # What the fake answers this body (it answers alike every time), priced at a dollar a token.
    with urllib.request.urlopen(urllib.request.Request(
            fake.base_url + "/chat/completions", data=data,
            headers={"content-type": "application/json", "authorization": "Bearer provider-key"})) as resp:
        usage = json.load(resp)["usage"]
    cost = usage["prompt_tokens"] + usage["completion_tokens"]  # dollars
    worst = reservation(data)  # dollars
    # Two answers settled leave less than one worst case: the third is refused.
    budget = 2 * cost + worst - 1
    config = limited_config(
        fake, {"search": {"keys": [line.htpasswd], "metrics_labels": {"department": "search"}}},
        {"departments": {"search": {"budget": {"usd": budget, "period": "month"}}}},
        pricing={"gpt-4o-mini": {"input": 1_000_000, "output": 1_000_000}})
    gateway = start_gateway(config)
    statuses = []
    for n in range(1, 4):
        answer = post(gateway, key, data)
        statuses.append(answer.status)
        if answer.status == 200:
            wait_for(lambda n=n: gateway.metric_total("hapax_cost_usd_total", department="search") >= n * cost,
                     "the answer's cost counted")
            time.sleep(0.3)  # its settlement follows the count
    assert statuses == [200, 200, 429]
    assert answer.error()["code"] == "budget_exceeded" and "department search" in answer.error()["message"]
    assert gateway.metric_total("hapax_cost_usd_total", department="search") == 2 * cost
    remaining = gateway.metric_total("hapax_budget_remaining_usd", scope="department:search")
    assert remaining == pytest.approx(budget - 2 * cost)


@pytest.mark.parametrize("choice", ["open", "closed"])
def test_a_redis_that_is_down_is_the_configured_choice(fake, tmp_path_factory, start_gateway, choice):
    key, line = new_key()
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        config = limited_config(fake, {"search": {"keys": [line.htpasswd], "limits": {"requests_per_day": 100}}},
                                {"store": server.url, "on_store_error": choice})
        gateway = start_gateway(config)
        assert post(gateway, key, body()).status == 200
    answer = post(gateway, key, body())  # the server has stopped
    if choice == "open":
        assert answer.status == 200
        assert gateway.metric_total("hapax_admissions_total", result="unchecked") >= 1
    else:
        assert answer.status == 503, answer.body
        assert answer.headers["content-type"] == "application/json"
        assert answer.error()["code"] == "limits_unavailable"


def test_only_requests_a_limit_may_hold_are_checked(fake, start_gateway):
    limited_key, limited = new_key()
    free_key, free = new_key()
    config = limited_config(fake, {"limited": {"keys": [limited.htpasswd], "limits": {"tokens_per_day": 10**9}},
                                   "free": {"keys": [free.htpasswd]}},
                            {"departments": {"marketing": {"requests_per_day": 2}}})
    config["routes"] = [{"path": "/v1/chat/completions", "handler": "chat"},
                        {"path": "/marketing/v1/chat/completions", "handler": "chat",
                         "metrics_labels": {"department": "marketing"}}]
    gateway = start_gateway(config)
    fake.reset()
    # A client no limit holds, on a route no limit holds: Envoy asks nothing.
    answer = post(gateway, free_key, body())
    assert answer.status == 200 and not any(h.startswith("x-ratelimit") for h in answer.headers)
    assert "x-ratelimit-limit-tokens" in post(gateway, limited_key, body()).headers
    wait_for(lambda: total([gateway], "hapax_admissions_total", result="admitted") == 1, "the one check counted")
    # The same free client on a limited department's route: its third request is refused.
    statuses = [send(gateway, "POST", "/marketing/v1/chat/completions", body(),
                     {"authorization": f"Bearer {free_key}"}).status for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_a_limit_holds_the_requests_the_router_step_routes_as_it_holds_a_lanes(fake, start_gateway):
    """Envoy's rate limit filter asks about a request only once its route has a cluster: the router
    step's route names its chain from a header the step sets later, so every request it routes
    (model auto, a dedup route, the Messages and Responses APIs to a translating provider) once went
    unchecked. Each must be refused as a lane's is, in its API's shape."""
    key, line = new_key()
    config = limited_config(fake, {"search": {"keys": [line.htpasswd], "limits": {"tokens_per_minute": 3000}}})
    config["routes"] = [{"path": "/v1/dedup/chat/completions", "handler": "chat", "dedup": "always"}]
    gateway = start_gateway(config)
    ask = [{"role": "user", "content": "x"}]
    over = {  # each asks for more than the minute's 3,000 tokens
        "lane": ("/v1/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 5000, "messages": ask}),
        "auto": ("/v1/chat/completions", {"model": "auto", "max_tokens": 5000, "messages": ask}),
        "dedup": ("/v1/dedup/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 5000, "messages": ask}),
        "stream": ("/v1/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 5000, "messages": ask,
                                            "stream": True}),
        "messages": ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 5000, "messages": ask}),
        "responses": ("/v1/responses", {"model": "auto", "max_output_tokens": 5000, "input": "x"}),
    }
    fake.reset()
    answers = {name: send(gateway, "POST", path, fields, {"authorization": f"Bearer {key}"})
               for name, (path, fields) in over.items()}
    assert {name: a.status for name, a in answers.items()} == dict.fromkeys(over, 429)
    assert fake.requests == []
    assert answers["messages"].json()["error"]["type"] == "rate_limit_error"  # Anthropic's shape there
    assert answers["auto"].error()["code"] == "rate_limit_exceeded"
    # A request within the limit on the same routes is served.
    within = send(gateway, "POST", "/v1/chat/completions", {"model": "auto", "max_tokens": 50, "messages": ask},
                  {"authorization": f"Bearer {key}"})
    assert within.status == 200
