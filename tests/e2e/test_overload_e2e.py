"""Far above capacity, the gateway sheds load with a 503 a client can act on.

ext_proc's cluster allows ``ext_proc.max_streams_per_worker`` gRPC streams per worker; a
request beyond that must get a 503 in OpenAI's error shape with ``retry-after``, never a bare
500, and never be failed over to the next provider as if the provider had failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from hapax.fakes import FakeOpenAI, Latency
from tests.conftest import gateway_config, wait_for

STREAMS = 4
BURST = 60
SECONDS = 3.0


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(FakeOpenAI(api_key="k-primary", model="gpt-4o-mini"),
                           FakeOpenAI(api_key="k-secondary", model="gpt-4o")) as fakes:
        yield fakes


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    primary, secondary = fakes
    config = gateway_config(
        {"primary": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k-primary",
                     "base_url": primary.base_url},
         "secondary": {"type": "openai", "model": "gpt-4o", "api_key": "k-secondary",
                       "base_url": secondary.base_url}},
        preference=["primary", "secondary"])
    config["ext_proc"] = {"workers": 1, "max_streams_per_worker": STREAMS}
    return start_gateway(config)


async def _burst(url: str, body: dict) -> list[tuple[int, dict[str, str], bytes]]:
    deadline = time.monotonic() + SECONDS
    answers: list[tuple[int, dict[str, str], bytes]] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with session.post(url, json=body) as resp:
                answers.append((resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()))

    # No compression: the 503's JSON is read as it is.
    headers = {"accept-encoding": "identity"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=headers,
                                     auto_decompress=False) as session:
        await asyncio.gather(*(client(session) for _ in range(BURST)))
    return answers


@pytest.mark.parametrize("model", ["auto", "gpt-4o-mini"])
def test_a_burst_far_above_capacity_gets_200s_and_503s_with_retry_after_and_no_failover(gateway, fakes, model):
    primary, secondary = fakes
    for fake in fakes:
        fake.reset()
    primary.inject(Latency(0.2), times=None)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    answers = asyncio.run(_burst(gateway.base_url + "/chat/completions", body))
    primary.clear_faults()

    statuses = sorted({status for status, _, _ in answers})
    assert set(statuses) <= {200, 503}, statuses
    shed = [(headers, body) for status, headers, body in answers if status == 503]
    assert shed, "the burst never went over the limit"
    assert sum(status == 200 for status, _, _ in answers), "nothing got through"
    for headers, raw in shed:
        assert headers.get("retry-after") == "1", headers
        error = json.loads(raw)["error"]
        assert error["code"] == "overloaded", error
    # The gateway's own limit is not the provider's failure: nothing was failed over.
    assert len(secondary.requests) == 0


def _stats(gateway) -> dict[str, str]:
    lines = gateway.admin("/stats?filter=^(overload|server.memory)").splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def test_envoys_heap_has_a_ceiling_and_stays_under_it(gateway):
    stats = _stats(gateway)
    # The fixed_heap monitor runs (envoy/bootstrap.yaml) and reports pressure well below the
    # 0.95 of shrink_heap and 0.98 of stop_accepting_requests, after the bursts above.
    assert "overload.envoy.resource_monitors.fixed_heap.pressure" in stats, sorted(stats)
    assert int(stats["overload.envoy.resource_monitors.fixed_heap.pressure"]) < 95
    assert int(stats["server.memory_heap_size"]) < 1 << 30
    assert stats["overload.envoy.overload_actions.stop_accepting_requests.active"] == "0"


def test_past_its_heap_ceiling_envoy_answers_503_overloaded_with_retry_after(fakes, start_gateway, monkeypatch):
    # A ceiling below what Envoy holds at rest: stop_accepting_requests is on from the start.
    args = os.environ.get("HAPAX_TEST_SERVE_ARGS", "")
    monkeypatch.setenv("HAPAX_TEST_SERVE_ARGS", f"{args} --envoy-max-heap-mb 1".strip())
    primary, _ = fakes
    gateway = start_gateway(gateway_config(
        {"primary": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k-primary", "base_url": primary.base_url}}))
    request = urllib.request.Request(
        gateway.base_url + "/chat/completions", method="POST", headers={"content-type": "application/json"},
        data=json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode())
    wait_for(lambda: _stats(gateway).get("overload.envoy.overload_actions.stop_accepting_requests.active") == "1",
             "the overload manager to stop accepting requests", timeout=10)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 503
    assert refused.value.headers["retry-after"] == "1"
    assert json.loads(refused.value.read())["error"]["code"] == "overloaded"
