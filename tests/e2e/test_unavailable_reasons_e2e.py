"""When no provider can serve, the 503 says why, and /health agrees with Envoy.

Three providers, each out of rotation for its own reason: one whose base_url is
a closed port, one that refuses the gateway's key, one that asked (429 with a
retry-after) to be left alone. Once Envoy routes around all three, a request
gets 503 ``provider_unavailable`` naming each provider's last known reason, and
``/health`` says ``degraded``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import urllib.error
import urllib.request

import openai
import pytest

from hapax.fakes import FakeOpenAI, Status
from tests.conftest import gateway_config, wait_for

HOLD_OFF_SECONDS = 120  # outlasts the module; the gateway caps a retry-after at 300 s
INTERVAL = 0.2


def _closed_port() -> int:
    """A port nothing listens on: bound, then closed again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(FakeOpenAI(api_key="not-the-gateways-key", model="gpt-4o-mini"),
                           FakeOpenAI(api_key="k-limited", model="gpt-4o-mini")) as fakes:
        yield fakes


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    refusing, limited = fakes
    config = gateway_config(
        {"limited": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k-limited",
                     "base_url": limited.base_url},
         "unreachable": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k-unreachable",
                         "base_url": f"http://127.0.0.1:{_closed_port()}/v1"},
         "refusing": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k-refused",
                      "base_url": refusing.base_url}},
        preference=["limited", "unreachable", "refusing"])
    config["health_check"] = {"interval": f"{int(INTERVAL * 1000)}ms", "timeout": "150ms",
                              "unhealthy_threshold": 2, "healthy_threshold": 2}
    return start_gateway(config)


def health(gateway) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(gateway.url + "/health", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@pytest.fixture(scope="module")
def client(gateway, fakes):
    _, limited = fakes
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)
    # The limited provider asks to be left alone on the first request it gets.
    limited.inject(Status(429, retry_after=HOLD_OFF_SECONDS), method="POST")

    def limited_was_asked() -> bool:
        # Whoever answers: what matters is that the limited provider got the request.
        with contextlib.suppress(openai.APIStatusError):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        return any(r.method == "POST" for r in limited.requests)

    wait_for(limited_was_asked, "the limited provider to get a request")
    wait_for(lambda: _unavailable(client) is not None, "Envoy to route around every provider")
    return client


def _unavailable(client, model: str = "auto", stream: bool = False) -> dict | None:
    """The error of a request no provider could serve; None while some provider still answers."""
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "anyone?"}],
                                       stream=stream)
    except openai.APIStatusError as err:
        if err.status_code == 503 and err.body.get("code") == "provider_unavailable":
            return err.body
    return None


def _reason(client, provider: str) -> str:
    body = _unavailable(client)
    assert body is not None
    found = re.search(rf"{provider}: ([^;]*)", body["message"])
    assert found, body["message"]
    return found.group(1)


def test_the_503_names_a_provider_that_cannot_be_reached(client):
    assert _reason(client, "unreachable").startswith("connection refused")


def test_the_503_says_a_provider_refused_the_gateways_key(client):
    assert "refused the gateway's key (HTTP 401)" in _reason(client, "refusing")


def test_the_503_says_a_provider_is_holding_off_and_for_how_long(client):
    found = re.match(r"holding off for (\d+) s after a 429", _reason(client, "limited"))
    assert found, _reason(client, "limited")
    assert 0 < int(found.group(1)) <= HOLD_OFF_SECONDS


def test_the_503_never_carries_a_key_or_a_providers_body(client):
    body = _unavailable(client)
    assert body is not None
    for secret in ("k-limited", "k-unreachable", "k-refused", "not-the-gateways-key", "Incorrect API key"):
        assert secret not in json.dumps(body)


def test_health_is_degraded_when_no_provider_can_serve(client, gateway):
    status, report = health(gateway)
    assert (status, report["status"]) == (503, "degraded"), report
    states = {name: p["status"] for name, p in report["providers"].items()}
    assert states == {"unreachable": "unhealthy", "refusing": "unhealthy", "limited": "holding_off"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_request_envoy_routes_from_its_body_gets_the_reasons_too(client, stream):
    # gpt-4o-mini is the providers' own model: Envoy routes it from the body (the passthrough
    # lane), with no router step, to the chain's last member once no provider is in rotation.
    body = _unavailable(client, model="gpt-4o-mini", stream=stream)
    assert body is not None
    assert "unreachable: connection refused" in body["message"], body["message"]
    assert re.search(r"limited: holding off for \d+ s after a 429", body["message"]), body["message"]
