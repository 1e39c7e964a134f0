"""Hostile input, end to end: each is refused with a clear 4xx, and the gateway keeps serving.

Raw sockets and http.client, because an SDK cannot send most of these. One gateway with an
OpenAI and an Anthropic fake serves every test in this module.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from control_plane.resources.listeners import MAX_HEADERS_COUNT, REQUEST_HEADERS_TIMEOUT
from hapax.fakes import FakeAnthropic, FakeOpenAI, Latency
from tests.conftest import gateway_config, wait_for

OPENAI_KEY = "sk-openai-hostile"
ANTHROPIC_KEY = "sk-ant-hostile"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
# Short, so that the slow-body test is quick; the default is in docs/operations.md.
REQUEST_TIMEOUT = 3


@pytest.fixture(scope="module")
def fakes(fake_host):
    openai_fake = fake_host.start(FakeOpenAI(api_key=OPENAI_KEY, model="gpt-4o-mini"))
    anthropic_fake = fake_host.start(FakeAnthropic(api_key=ANTHROPIC_KEY, model=ANTHROPIC_MODEL))
    yield openai_fake, anthropic_fake
    fake_host.run(openai_fake.stop())
    fake_host.run(anthropic_fake.stop())


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    openai_fake, anthropic_fake = fakes
    config = gateway_config({
        "openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "${OPENAI_KEY}",
                   "base_url": openai_fake.base_url},
        "anthropic": {"type": "anthropic", "model": ANTHROPIC_MODEL, "api_key": "${ANTHROPIC_KEY}",
                      "base_url": anthropic_fake.base_url},
    }, preference=["openai", "anthropic"])
    config["server"]["request_timeout"] = REQUEST_TIMEOUT
    return start_gateway(config, env={"OPENAI_KEY": OPENAI_KEY, "ANTHROPIC_KEY": ANTHROPIC_KEY})


def address(gateway) -> tuple[str, int]:
    parts = urlsplit(gateway.url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def post(gateway, body: bytes, headers: dict[str, str] | None = None,
         path: str = "/v1/chat/completions") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(*address(gateway), timeout=30)
    try:
        conn.request("POST", path, body=body,
                     headers={"content-type": "application/json", "authorization": "Bearer sk-client",
                              **(headers or {})})
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, json.loads(text) if text else {}
    finally:
        conn.close()


def chat(model: str = "gpt-4o-mini", content: str = "hi", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()


@pytest.fixture(autouse=True)
def still_serving(gateway, fakes):
    """After every attack, the gateway still answers a normal request."""
    for fake in fakes:
        fake.reset()
    yield
    for model in ("gpt-4o-mini", ANTHROPIC_MODEL):
        status, body = post(gateway, chat(model))
        assert status == 200, body


def posted(fake) -> list:
    """What reached a provider from a client (not the gateway's health probes)."""
    return [r for r in fake.requests if r.method == "POST"]


def refused(status: int, body: dict[str, Any], code: str, words: str, expected: int = 400) -> None:
    assert status == expected, body
    error = body["error"]
    assert error["type"] == "invalid_request_error", error
    assert error["code"] == code, error
    assert words in error["message"], error


@pytest.mark.parametrize("body", [
    b'{"model": "gpt-4o-mini", "max_tokens": 1' + b"7" * 5000 + b', "messages": [{"role": "user", "content": "hi"}]}',
    # An Anthropic model: an OpenAI provider's own model takes the passthrough lane, whose
    # body the provider checks (docs/architecture.md).
    b'{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "metadata": {"n": '
    + b"9" * 200 + b"}}",
], ids=["max_tokens", "elsewhere"])
def test_a_huge_integer_is_refused(gateway, fakes, body: bytes) -> None:
    status, answer = post(gateway, body)
    refused(status, answer, "invalid_value", "digits is too large")
    assert not any(posted(fake) for fake in fakes)


def test_json_nested_1000_deep_is_refused(gateway, fakes) -> None:
    nested = b"[" * 1000 + b"]" * 1000
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + nested + b"}"
    status, answer = post(gateway, body)
    refused(status, answer, "invalid_json", "nested too deeply")


def test_json_nested_150_deep_is_refused(gateway, fakes) -> None:
    """Under Python's recursion limit, over the gateway's."""
    nested = b'{"a":' * 150 + b"1" + b"}" * 150
    body = b'{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "metadata": ' \
        + nested + b"}"
    refused(*post(gateway, body), "invalid_json", "nested too deeply")


def test_a_lone_surrogate_to_anthropic_is_refused(gateway, fakes) -> None:
    body = chat(ANTHROPIC_MODEL, "x").replace(b'"x"', b'"a \\ud800 b"')
    status, answer = post(gateway, body)
    refused(status, answer, "invalid_json", "surrogate")
    assert not posted(fakes[1])


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_non_finite_numbers_are_refused(gateway, fakes, literal: bytes) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": ' + literal + b"}"
    status, answer = post(gateway, body)
    assert status == 400, answer
    assert answer["error"]["code"] in ("invalid_json", "invalid_value"), answer
    assert not posted(fakes[0])


@pytest.mark.parametrize("count", [70, 90])
@pytest.mark.parametrize("model", ["gpt-4o-mini", ANTHROPIC_MODEL])
def test_too_many_headers_are_refused_with_431(gateway, fakes, model: str, count: int) -> None:
    headers = {f"x-extra-{i}": "v" for i in range(count)}
    status, answer = post(gateway, chat(model), headers)
    refused(status, answer, "request_header_fields_too_large", "headers", expected=431)
    assert_access_logged(gateway, 431)


@pytest.mark.parametrize("model", ["gpt-4o-mini", ANTHROPIC_MODEL])
def test_headers_just_under_the_limit_are_served(gateway, fakes, model: str) -> None:
    """What Envoy and ext_proc add on the way must still fit: no 500 near the limit."""
    headers = {f"x-extra-{i}": "v" * 900 for i in range(MAX_HEADERS_COUNT - 6)}  # with the client's own 6
    status, answer = post(gateway, chat(model), headers)
    assert status == 200, answer


def test_huge_headers_are_refused_with_431(gateway, fakes) -> None:
    headers = {"x-big": "v" * 70_000}
    status, answer = post(gateway, chat(), headers)
    refused(status, answer, "request_header_fields_too_large", "headers", expected=431)


@pytest.mark.parametrize("model", ["gpt-4o-mini", ANTHROPIC_MODEL])
def test_a_websocket_upgrade_is_refused(gateway, fakes, model: str) -> None:
    status, answer = post(gateway, chat(model), {"connection": "upgrade", "upgrade": "websocket"})
    assert 400 <= status < 500, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error", error
    assert "upgrade" in error["message"].lower(), error
    assert "api_key" not in error["message"], error
    assert not any(posted(fake) for fake in fakes)


def test_a_slow_body_is_cut_at_the_request_timeout(gateway, fakes) -> None:
    started = time.monotonic()
    with socket.create_connection(address(gateway), timeout=REQUEST_TIMEOUT + 10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"model\": ")
        answer = b""
        while chunk := sock.recv(65536):  # until Envoy closes the connection
            answer += chunk
    elapsed = time.monotonic() - started
    assert REQUEST_TIMEOUT - 0.5 <= elapsed < REQUEST_TIMEOUT + 5, elapsed
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request_timeout" in answer, answer
    assert not posted(fakes[0])
    assert_access_logged(gateway, 408)


def test_slow_headers_are_cut_at_the_headers_timeout(gateway, fakes) -> None:
    started = time.monotonic()
    with socket.create_connection(address(gateway), timeout=REQUEST_HEADERS_TIMEOUT + 10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    elapsed = time.monotonic() - started
    # The request timeout, shorter here, covers the headers too: the first to expire cuts.
    assert min(REQUEST_TIMEOUT, REQUEST_HEADERS_TIMEOUT) - 0.5 <= elapsed < REQUEST_HEADERS_TIMEOUT + 5, elapsed
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request_timeout" in answer, answer


def test_a_slow_provider_answer_outlasts_the_request_timeout(gateway, fakes) -> None:
    """request_timeout covers receiving the request: once it has gone upstream, the answer may be slow."""
    fakes[0].inject(Latency(REQUEST_TIMEOUT + 1), times=1)
    status, answer = post(gateway, chat())
    assert status == 200, answer


def test_a_long_stream_outlasts_the_request_timeout(gateway, fakes) -> None:
    fakes[0].chunk_delay = 1.0
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection(*address(gateway), timeout=30)
        conn.request("POST", "/v1/chat/completions", body=chat(stream=True),
                      headers={"content-type": "application/json", "authorization": "Bearer sk-client"})
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
    finally:
        fakes[0].chunk_delay = 0.0
    assert time.monotonic() - started > REQUEST_TIMEOUT, "the stream must last longer than the timeout"
    assert resp.status == 200, text
    assert text.rstrip().endswith("data: [DONE]"), text


def assert_access_logged(gateway, status: int) -> None:
    def logged() -> bool:
        for line in gateway.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("logger") == "access" and str(entry.get("status")) == str(status):
                return True
        return False
    wait_for(logged, f"an access-log line with status {status}", timeout=10)
