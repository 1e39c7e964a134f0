"""A provider that accepts requests and never answers is ejected after a few timeouts.

Each timed-out attempt is a failure for outlier detection: an attempt listener's
504 a gateway failure, the route's own per-try idle timeout a local-origin one.
Three in a row eject the provider, and its health verdict, which its probes keep
"healthy" (a hanging chat endpoint may still list its models), must not bring it
straight back: after a few requests, new ones go straight to the secondary.
"""

from __future__ import annotations

import time

import openai
import pytest

from hapax.fakes import FakeOpenAI, Hang
from tests.conftest import gateway_config

MODEL = "gpt-4o-mini"
EJECTED_AFTER = 3  # outlier detection's consecutive failures
REQUESTS = 8


def ask_times(client: openai.OpenAI, count: int) -> None:
    for i in range(count):
        answer = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"{i}"}])
        assert answer.choices[0].message.content.endswith(f"{i}")


def posts(fake) -> int:
    return len([r for r in fake.requests if r.method == "POST"])


@pytest.mark.parametrize("secondary_timeout", ["60s", "1s"], ids=["attempt-listener", "route-idle-timeout"])
def test_a_hanging_primary_stops_getting_requests(fake_host, start_gateway, secondary_timeout):
    primary = fake_host.start(FakeOpenAI(api_key="k1", model=MODEL))
    secondary = fake_host.start(FakeOpenAI(api_key="k2", model=MODEL))
    try:
        primary.inject(Hang(), times=None, method="POST")  # its health probes still answer
        gateway = start_gateway(gateway_config(
            {"primary": {"type": "openai", "model": MODEL, "api_key": "k1", "base_url": primary.base_url,
                         "timeout": "1s"},
             "secondary": {"type": "openai", "model": MODEL, "api_key": "k2", "base_url": secondary.base_url,
                           "timeout": secondary_timeout}},
            preference=["primary", "secondary"]))
        client = openai.OpenAI(base_url=gateway.base_url, api_key="c", max_retries=0, timeout=60)
        ask_times(client, REQUESTS)
        # The first few waited out the primary's timeout; the rest went straight to the secondary.
        tried = posts(primary)
        assert tried <= EJECTED_AFTER + 1
        assert posts(secondary) == REQUESTS
        # Several verdict polls later (each "healthy": the probes answer), it is still out.
        time.sleep(3)
        ask_times(client, 3)
        assert posts(primary) == tried
    finally:
        for fake in (primary, secondary):
            fake_host.run(fake.stop())
