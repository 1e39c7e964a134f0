"""A provider's 404 is the gateway's configuration: the client gets a 502 naming the provider.

The fakes serve their real paths, so a base_url without /v1 (OpenAI) or with one
(Anthropic, Ollama) gets each provider's real 404 for a path it does not serve.
Every way an answer can take is tried: the passthrough lane (Envoy alone), a
stream the model lane sends as it is (ext_proc never reads its answer's
headers), and attempts ext_proc translates.

The 502 is a failed attempt like any other: the next provider is tried, and a
provider that gave three in a row is ejected for a while (outlier detection),
after which its clients get 503s. So each gateway with a broken provider makes
one attempt per request, and gets at most two 502s from ext_proc.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI
from tests.conftest import gateway_config

MESSAGES = [{"role": "user", "content": "where are you?"}]


@pytest.fixture(scope="module")
def fakes(fake_host):
    started = {"openai": fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini")),
               "backup": fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini")),
               "anthropic": fake_host.start(FakeAnthropic(api_key="k", model="claude-3-haiku")),
               "ollama": fake_host.start(FakeOllama(model="llama3.2"))}
    yield started
    for fake in started.values():
        fake_host.run(fake.stop())


@pytest.fixture(autouse=True)
def _fresh(fakes):
    for fake in fakes.values():
        fake.reset()


def _client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0, timeout=30)


def _ask(client: openai.OpenAI, model: str, how: str):
    if how == "stream as sent":  # the provider's own model, the usage chunk asked for: the body goes as it is
        return list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                   stream_options={"include_usage": True}))
    if how == "stream":
        return list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    return client.chat.completions.create(model=model, messages=MESSAGES)


def _refused(client: openai.OpenAI, model: str, how: str) -> dict:
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client, model, how)
    assert err.value.status_code == 502
    body = err.value.body
    assert body["type"] == "server_error"
    assert "not the client's" in body["message"]
    return body


def _alone(name: str, provider: dict) -> dict:
    """A gateway of one provider, one attempt per request."""
    return {**gateway_config({name: provider}), "retry": {"max_attempts": 1}}


@pytest.fixture(scope="module")
def openai_without_v1(fakes, start_gateway):
    return start_gateway(_alone("openai", {
        "type": "openai", "model": "gpt-4o-mini", "api_key": "k", "base_url": fakes["openai"].origin}))


@pytest.mark.parametrize("model, how", [
    ("gpt-4o-mini", "json"),            # the passthrough lane: Envoy alone
    ("gpt-4o-mini", "stream as sent"),  # the model lane, the answer's headers not read
    ("gpt-4o-mini", "stream"),          # the model lane, translated
    ("auto", "json"),                   # the ordinary route and the router step
])
def test_an_openai_base_url_without_v1_gets_a_502_naming_the_provider(openai_without_v1, fakes, model, how):
    body = _refused(_client(openai_without_v1), model, how)
    assert "'openai'" in body["message"] and "base_url" in body["message"]
    assert [r.path for r in fakes["openai"].requests] == ["/chat/completions"]  # OpenAI: 'Invalid URL'
    if how in ("json", "stream as sent") and model != "auto":
        assert body["code"] == "provider_not_found"  # Envoy's: it reads no body, so names base_url or model
    else:  # ext_proc read the provider's answer: it says what the base_url lacks
        assert body["code"] == "provider_path_not_found"
        assert "Invalid URL (POST /chat/completions)" in body["message"] and "/v1" in body["message"]


def test_the_gateways_own_404s_stay_404s(openai_without_v1):
    with pytest.raises(openai.NotFoundError) as err:
        _ask(_client(openai_without_v1), "no-such-model", "json")
    assert err.value.body["code"] == "model_not_found"
    request = urllib.request.Request(openai_without_v1.url + "/v1/nowhere", method="GET")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=10)
    assert missing.value.code == 404
    assert json.loads(missing.value.read())["error"]["code"] == "unknown_url"


@pytest.fixture(scope="module")
def anthropic_with_v1(fakes, start_gateway):
    return start_gateway(_alone("claude", {
        "type": "anthropic", "model": "claude-3-haiku", "api_key": "k",
        "base_url": fakes["anthropic"].origin + "/v1"}))


@pytest.mark.parametrize("how", ["json", "stream"])
def test_an_anthropic_base_url_ending_in_v1_gets_a_502_saying_the_gateway_adds_it(anthropic_with_v1, fakes, how):
    body = _refused(_client(anthropic_with_v1), "claude-3-haiku", how)
    assert body["code"] == "provider_path_not_found"
    assert "'claude'" in body["message"] and "/v1/messages" in body["message"]
    assert fakes["anthropic"].requests[0].path == "/v1/v1/messages"


@pytest.fixture(scope="module")
def ollama_with_v1(fakes, start_gateway):
    return start_gateway(_alone("llama", {
        "type": "ollama", "model": "llama3.2", "base_url": fakes["ollama"].origin + "/v1"}))


@pytest.mark.parametrize("how", ["json", "stream"])
def test_an_ollama_base_url_ending_in_v1_gets_a_502_saying_the_gateway_adds_api(ollama_with_v1, fakes, how):
    body = _refused(_client(ollama_with_v1), "llama3.2", how)
    assert body["code"] == "provider_path_not_found"
    assert "'llama'" in body["message"] and "/api/chat" in body["message"]
    assert fakes["ollama"].requests[0].path == "/v1/api/chat"


@pytest.fixture(scope="module")
def stale_then_backup(fakes, start_gateway):
    return start_gateway(gateway_config({
        "stale": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k", "base_url": fakes["openai"].origin},
        "backup": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k", "base_url": fakes["backup"].base_url}},
        preference=["stale", "backup"]))


@pytest.mark.parametrize("how", ["json", "stream as sent", "stream"])
def test_a_provider_answering_404_fails_over_like_any_failed_attempt(stale_then_backup, fakes, how):
    answer = _ask(_client(stale_then_backup), "gpt-4o-mini", how)
    text = answer.choices[0].message.content if how == "json" else \
        "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert text.startswith("Hello from fake-openai!")
    assert [r.path for r in fakes["openai"].requests] == ["/chat/completions"]
    assert [r.path for r in fakes["backup"].requests] == ["/v1/chat/completions"]
