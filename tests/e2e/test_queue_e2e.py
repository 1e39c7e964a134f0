"""The queue through the real Envoy: a saturated provider's requests wait instead of failing.

A provider allowed two requests at once (its circuit breaker) and eight clients at once: all
eight are answered, six of them after a wait (counted in ``hapax_queue_wait_seconds``); a wait past
``queue.timeout`` is a 503 with ``retry-after`` in OpenAI's error JSON; one department's burst
waits behind itself, not in front of another department's requests. (Without ``queue:``, Envoy's
circuit breaker decides: its pending requests wait first come, first served, or overflow with a
503, depending on when connections free up: no test can pin which.)
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from hapax.client_keys import new_key
from hapax.fakes import FakeOpenAI
from hapax.fakes.faults import Latency
from tests.conftest import gateway_config, wait_for
from tests.raw_http import Answer, post_chat

CALLS = 8
SLOTS = 2
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def all_at_once(gateway) -> list[Answer]:
    with ThreadPoolExecutor(CALLS) as pool:
        return list(pool.map(lambda _: post_chat(gateway, BODY), range(CALLS)))


@pytest.fixture(scope="module")
def fake(fake_host):
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    yield fake
    fake_host.run(fake.stop())


def saturated_config(fake, queue: dict | None) -> dict:
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url,
                                        "circuit_breaker": {"max_concurrent_requests": SLOTS}}})
    if queue is not None:
        config["queue"] = queue
    return config


@pytest.fixture
def slow(fake):
    fake.reset()
    fake.inject(Latency(1.5), times=None, method="POST")  # each request holds its slot a while
    yield fake
    fake.clear_faults()


def test_with_a_queue_every_request_is_answered_after_waiting_its_turn(slow, start_gateway):
    gateway = start_gateway(saturated_config(slow, {"timeout": "20s"}))
    answers = all_at_once(gateway)
    assert [a.status for a in answers] == [200] * CALLS, [a.body[:200] for a in answers]
    assert len([r for r in slow.requests if r.method == "POST"]) == CALLS
    # Two went at once; the six others waited for a slot, and each wait was counted.
    assert gateway.metric_total("hapax_queue_wait_seconds_count", result="go") == CALLS - SLOTS
    assert gateway.metric_total("hapax_queue_waiting") == 0


def test_a_wait_past_the_queues_timeout_is_a_503_with_retry_after(fake, start_gateway):
    fake.reset()
    fake.inject(Latency(3.0), times=None, method="POST")
    try:
        gateway = start_gateway(saturated_config(fake, {"timeout": "300ms"}))
        answers = all_at_once(gateway)
    finally:
        fake.clear_faults()
    refused = [a for a in answers if a.status == 503]
    assert len([a for a in answers if a.status == 200]) == SLOTS and len(refused) == CALLS - SLOTS
    for answer in refused:
        assert answer.error()["code"] == "queue_timeout"
        assert answer.headers["retry-after"] == "1" and answer.headers["content-type"] == "application/json"
    assert gateway.metric_total("hapax_queue_wait_seconds_count", result="timed_out") == CALLS - SLOTS


def test_a_departments_burst_does_not_starve_another_department(fake, start_gateway):
    burst_key, burst_line = new_key()
    late_key, late_line = new_key()
    config = saturated_config(fake, {"timeout": "60s"})
    config["providers"]["openai"]["circuit_breaker"]["max_concurrent_requests"] = 1
    config["clients"] = {"ads": {"keys": [burst_line.htpasswd], "metrics_labels": {"department": "ads"}},
                         "search": {"keys": [late_line.htpasswd], "metrics_labels": {"department": "search"}}}
    gateway = start_gateway(config)
    fake.reset()
    fake.inject(Latency(0.5), times=None, method="POST")
    finished: list[str] = []

    def call(department: str, key: str) -> None:
        assert post_chat(gateway, BODY, key).status == 200
        finished.append(department)

    try:
        with ThreadPoolExecutor(8) as pool:
            burst = [pool.submit(call, "ads", burst_key) for _ in range(6)]
            wait_for(lambda: gateway.metric_total("hapax_queue_waiting") == 5, "the burst waiting")
            late = [pool.submit(call, "search", late_key) for _ in range(2)]
            for future in (*burst, *late):
                future.result()
    finally:
        fake.clear_faults()
    # One slot: the burst's first goes at once and five wait; search's two, arriving after them,
    # are served in turn with the burst (third and fifth), not after the whole burst (seventh, eighth).
    assert [i for i, department in enumerate(finished) if department == "search"] == [2, 4], finished
