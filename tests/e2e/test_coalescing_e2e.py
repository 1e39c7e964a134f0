"""Coalescing through the real Envoy: identical requests in flight reach the provider once.

A route with ``dedup: true`` in front of a slow fake: eight identical concurrent requests (JSON,
then streams) make one provider request, and every client gets the whole answer under an id of
its own; a leader whose provider never answers ends every follower with its error; different
bodies, different clients' keys and sampled requests (temperature above 0, no seed) are never
coalesced.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from hapax.client_keys import new_key
from hapax.fakes import FakeOpenAI
from hapax.fakes.faults import Hang, Latency
from tests.conftest import gateway_config
from tests.raw_http import Answer, post_chat

CALLS = 8
KEY_A, LINE_A = new_key()
KEY_B, LINE_B = new_key()


def chat_body(content: str = "tell me a fact", stream: bool = False, **fields) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "temperature": 0, **fields}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body).encode()


def together(gateway, requests: list[tuple[bytes, str]]) -> list[Answer]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: post_chat(gateway, *r), requests))


def provider_calls(fake) -> int:
    return len([r for r in fake.requests if r.method == "POST"])


def dedup_config(fake, timeout: str = "60s") -> dict:
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url, "timeout": timeout}},
                            routes=[{"path": "/v1/chat/completions", "handler": "chat", "dedup": True}])
    config["clients"] = {"a": {"keys": [LINE_A.htpasswd]}, "b": {"keys": [LINE_B.htpasswd]}}
    return config


@pytest.fixture(scope="module")
def fake(fake_host):
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    yield fake
    fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def gateway(fake, start_gateway):
    return start_gateway(dedup_config(fake))


@pytest.fixture
def slow(fake):
    fake.reset()
    fake.inject(Latency(2.0), times=None, method="POST")  # the leader is in flight while the others arrive
    yield fake
    fake.clear_faults()


def test_identical_json_requests_reach_the_provider_once_and_each_gets_its_own_id(gateway, slow):
    answers = together(gateway, [(chat_body(), KEY_A)] * CALLS)
    assert [a.status for a in answers] == [200] * CALLS
    assert provider_calls(slow) == 1
    bodies = [a.json() for a in answers]
    assert len({b["id"] for b in bodies}) == CALLS
    assert len({json.dumps(b["choices"]) for b in bodies}) == 1 and all(b["usage"] for b in bodies)
    assert sorted(a.headers.get("x-hapax-coalesced", "") for a in answers) == [""] + ["true"] * (CALLS - 1)
    assert gateway.metric("hapax_requests_total", outcome="coalesced") >= CALLS - 1


def _events(body: bytes) -> list[dict]:
    text = body.decode()
    assert text.rstrip().endswith("data: [DONE]")
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "[DONE]" not in line]


def test_identical_streams_share_one_provider_stream_chunk_for_chunk(gateway, slow):
    answers = together(gateway, [(chat_body(stream=True), KEY_A)] * CALLS)
    assert [a.status for a in answers] == [200] * CALLS
    assert provider_calls(slow) == 1
    streams = [_events(a.body) for a in answers]
    ids = [{event["id"] for event in events} for events in streams]
    assert all(len(one) == 1 for one in ids) and len(set().union(*ids)) == CALLS  # one id per client
    texts = ["".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
             for events in streams]
    assert len(set(texts)) == 1 and texts[0]
    assert all(events[-1].get("usage") for events in streams)


def test_different_bodies_clients_and_sampled_requests_are_never_coalesced(gateway, slow):
    sampled = chat_body(temperature=0.7)
    requests = [(chat_body(), KEY_A), (chat_body(), KEY_A),  # these two share
                (chat_body("another question"), KEY_A), (chat_body(), KEY_B), (sampled, KEY_A), (sampled, KEY_A)]
    answers = together(gateway, requests)
    assert [a.status for a in answers] == [200] * len(requests)
    assert provider_calls(slow) == len(requests) - 1


def test_a_leader_that_gets_no_answer_ends_every_follower_with_its_error(fake, start_gateway):
    fake.reset()
    fake.inject(Hang(), times=None, method="POST")
    try:
        gateway = start_gateway(dedup_config(fake, timeout="1s"))
        answers = together(gateway, [(chat_body("hang"), KEY_A)] * 4)
    finally:
        fake.clear_faults()
    statuses = {a.status for a in answers}
    assert len(statuses) == 1 and statuses.pop() >= 500
    codes = {a.error()["code"] for a in answers}
    assert len(codes) == 1, codes
