"""Logs under load stay readable (issue #18), through the real gateway.

A burst of requests, each of which makes an access-log line (Envoy) and a warning
(ext_proc: the first provider failed, the second answered), from two ext_proc
workers at once. Every line the gateway writes on stderr must parse as one JSON
object, every request must have its access-log line, and the warnings must be
bounded by the rate limit, not by the number of failures.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from hapax.fakes import FakeOpenAI, Status
from tests.conftest import gateway_config, wait_for

WORKERS = 2
REQUESTS = 1500
CONCURRENCY = 50
BUDGET = 10  # hapax/logs.py RateLimit's default: records of one kind per interval
WARNING = "provider answered with an error; Envoy retries elsewhere if an attempt is left"


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
    config["ext_proc"] = {"workers": WORKERS}
    return start_gateway(config)


async def _burst(url: str) -> list[int]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    queue = iter(range(REQUESTS))
    statuses: list[int] = []

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in queue:
            async with session.post(url, json=body) as resp:
                await resp.read()
                statuses.append(resp.status)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return statuses


def _access_lines(gateway) -> list[str]:
    return [line for line in gateway.stderr if '"logger":"access"' in line]


def test_a_burst_of_failures_leaves_whole_json_lines_and_a_bounded_number_of_warnings(gateway, fakes):
    primary, _ = fakes
    # 429, not 5xx: outlier detection ejects a provider after 5 consecutive 5xx, and then
    # the requests would stop failing; a 429 is warned about on every attempt all the same.
    primary.inject(Status(429), method="POST", times=None)
    try:
        statuses = asyncio.run(_burst(gateway.base_url + "/chat/completions"))
    finally:
        primary.clear_faults()
    assert statuses.count(200) == REQUESTS  # each one failed over to the secondary
    failures = sum(1 for r in primary.requests if r.method == "POST")
    assert failures > 10 * WORKERS * BUDGET, "too few failures to show the rate limit"
    # Envoy writes its access log at least once a second; then the gateway stops, and its
    # workers say at exit how many warnings they held back.
    wait_for(lambda: len(_access_lines(gateway)) >= REQUESTS, "every request's access-log line")
    assert gateway.stop() == 0, "".join(gateway.stderr[-20:])

    def told() -> int:  # warnings written, and held back as the summaries count them
        entries = [json.loads(line) for line in list(gateway.stderr) if WARNING in line]
        return sum(e.get("suppressed", 1) for e in entries)

    wait_for(lambda: told() >= failures, "the workers' summaries, written as they exit")
    entries = []
    for line in list(gateway.stderr):
        assert line.endswith("\n"), line
        entry = json.loads(line)  # raises on a spliced or a plain-text line
        assert isinstance(entry, dict), line
        entries.append(entry)
    access = [e for e in entries if e.get("logger") == "access"]
    assert len({e["request_id"] for e in access}) >= REQUESTS
    warnings = [e for e in entries if e.get("msg") == WARNING]
    assert 0 < len(warnings) <= WORKERS * BUDGET
    summaries = [e for e in entries if e.get("similar_to") == WARNING]
    assert summaries and len(warnings) + sum(e["suppressed"] for e in summaries) == failures
