"""The seed example's shape end to end: Anthropic first, OpenAI second, Ollama local.

Requests leave the openai SDK in OpenAI's shape and reach each fake provider in
that provider's own wire format; the answers come back in OpenAI's shape.
"""

from __future__ import annotations

import itertools
import time

import openai
import pytest

from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI, Status
from tests.conftest import gateway_config, wait_for

ANTHROPIC_KEY = "sk-ant-test-secret"
# Longer than the access log's flush interval (250 ms): a count it would add has arrived.
LOG_FLUSH = 1.0
OPENAI_KEY = "sk-oai-test-secret"


@pytest.fixture(scope="module")
def fakes(fake_host):
    started = {
        "anthropic": fake_host.start(FakeAnthropic(api_key=ANTHROPIC_KEY, model="claude-3-haiku")),
        "openai": fake_host.start(FakeOpenAI(api_key=OPENAI_KEY, model="gpt-4")),
        "ollama": fake_host.start(FakeOllama(model="llama3.2")),
    }
    yield started
    for fake in started.values():
        fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    config = gateway_config(
        {
            "anthropic": {"type": "anthropic", "model": "claude-3-haiku", "api_key": "${ANTHROPIC_API_KEY}",
                          "base_url": fakes["anthropic"].base_url},
            "openai": {"type": "openai", "model": "gpt-4", "api_key": "${OPENAI_API_KEY}",
                       "base_url": fakes["openai"].base_url},
            "ollama": {"type": "ollama", "model": "llama3.2", "base_url": fakes["ollama"].base_url},
        },
        preference=["anthropic", "openai"],
        routes=[
            {"path": "/v1/chat/completions", "handler": "chat"},
            {"path": "/v1/embeddings", "handler": "embeddings"},
            {"path": "/v1/marketing/completions", "handler": "completion", "version": "v1",
             "metrics_labels": {"department": "marketing"}},
        ],
    )
    return start_gateway(config, env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY})


@pytest.fixture()
def client(gateway, fakes):
    for fake in fakes.values():
        fake.reset()
    return openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0, timeout=30)


def test_preference_order_sends_auto_requests_to_anthropic_in_its_format(client, fakes):
    reply = client.chat.completions.create(
        model="auto", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}])
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Hello from fake-anthropic! You said: hi there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    [sent] = fakes["anthropic"].requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body["system"] == "be brief"
    assert sent.body["model"] == "claude-3-haiku" and sent.body["max_tokens"] > 0
    assert fakes["openai"].requests == []


def test_anthropic_stream_becomes_openai_chunks(client, fakes):
    stream = client.chat.completions.create(
        model="claude-3-haiku", messages=[{"role": "user", "content": "stream it"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-anthropic! You said: stream it"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert fakes["anthropic"].requests[0].body["stream"] is True


def test_seed_marketing_route_serves_completions_from_anthropic(gateway, fakes, client):
    marketing = openai.OpenAI(base_url=gateway.url + "/v1/marketing", api_key="sk-client", max_retries=0)
    reply = marketing.completions.create(model="auto", prompt="write a tagline")
    assert reply.object == "text_completion"
    assert reply.choices[0].text == "Hello from fake-anthropic! You said: write a tagline"
    assert fakes["anthropic"].requests[0].path == "/v1/messages"


def test_ollama_model_is_served_through_the_native_chat_api(client, fakes):
    reply = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "local?"}],
                                           max_tokens=64)
    assert reply.choices[0].message.content == "Hello from fake-ollama! You said: local?"
    [sent] = fakes["ollama"].requests
    assert sent.path == "/api/chat"
    assert sent.body["stream"] is False and sent.body["options"]["num_predict"] == 64


def test_ollama_ndjson_stream_becomes_openai_sse(client, fakes):
    stream = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "stream local"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello from fake-ollama! You said: stream local"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_embeddings_on_an_anthropic_first_chain_get_a_clear_400(client, fakes):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="claude-3-haiku", input="x")
    # Anthropic serves no embeddings: its model is a chat model, which the gateway tells before any attempt.
    assert err.value.body["code"] == "model_not_supported"
    assert err.value.body["message"] == ("The model 'claude-3-haiku' is a chat model: it does not serve "
                                         "embeddings requests.")
    assert fakes["anthropic"].requests == []


def test_ollama_embeddings_come_back_in_openai_shape(client, fakes):
    reply = client.embeddings.create(model="llama3.2", input=["one", "two"])
    assert [d.index for d in reply.data] == [0, 1] and len(reply.data[0].embedding) > 0
    assert fakes["ollama"].requests[0].path == "/api/embed"


def test_a_retry_after_anthropic_fails_is_rewritten_for_openai(client, fakes):
    # The failover structure of the spine (aggregate cluster + per-attempt
    # ext_proc): the second attempt goes to another provider in its own format.
    fakes["anthropic"].inject(Status(500), method="POST")
    reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "fail over"}])
    assert reply.choices[0].message.content == "Hello from fake-openai! You said: fail over"
    assert [r.path for r in fakes["anthropic"].requests] == ["/v1/messages"]
    [sent] = fakes["openai"].requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "gpt-4" and "max_tokens" not in sent.body
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}" and "x-api-key" not in sent.headers


def test_a_retry_never_carries_the_previous_providers_credential(client, fakes):
    fakes["openai"].inject(Status(503), method="POST")
    reply = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "keys"}])
    assert reply.choices[0].message.content == "Hello from fake-anthropic! You said: keys"
    [sent] = fakes["anthropic"].requests
    assert "authorization" not in sent.headers
    assert OPENAI_KEY not in str(sent.headers) and OPENAI_KEY not in str(sent.body)
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY


@pytest.mark.parametrize("name,model,status", [("openai", "gpt-4", 401), ("anthropic", "claude-3-haiku", 401),
                                               ("openai", "gpt-4", 403)])
def test_a_provider_rejecting_the_gateways_key_is_a_502_naming_its_variable(client, fakes, name, model, status):
    fakes[name].inject(Status(status), times=None)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    fakes[name].clear_faults()
    assert err.value.status_code == 502
    body = err.value.body
    assert body["code"] == "provider_auth_failed"
    assert f"'{name}'" in body["message"] and f"HTTP {status}" in body["message"]
    assert "not the client's" in body["message"]
    # Where to fix it: the key's place in the config and its variable, never the key itself.
    variable = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}[name]
    assert f"(providers.{name}.api_key, from ${{{variable}}})" in body["message"]
    assert OPENAI_KEY not in str(body) and ANTHROPIC_KEY not in str(body)


@pytest.mark.parametrize("name,model", [("openai", "gpt-4"), ("anthropic", "claude-3-haiku"), ("ollama", "llama3.2")])
def test_stream_chunks_reach_the_client_as_the_provider_sends_them(client, fakes, name, model):
    # The fake waits 200 ms between chunks. A gateway that buffered the stream
    # would deliver every chunk at once; this one must deliver them spaced out.
    gap = 0.2
    fakes[name].chunk_delay = gap
    try:
        arrivals = []
        stream = client.chat.completions.create(model=model, stream=True,
                                                messages=[{"role": "user", "content": "one two three"}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    finally:
        fakes[name].chunk_delay = 0.0
    assert len(arrivals) >= 6
    spacings = [b - a for a, b in itertools.pairwise(arrivals)]
    # Lower bounds only: the machine may be slow, but it cannot make chunks
    # that were 200 ms apart at the provider arrive together unless buffered.
    assert arrivals[-1] - arrivals[0] >= gap * (len(arrivals) - 1) * 0.5
    assert sum(1 for s in spacings if s >= gap * 0.5) >= len(spacings) // 2


def test_anthropic_overloaded_529_reaches_the_client_as_openai_503(client, fakes):
    # chain.openai tries OpenAI, then Anthropic: the client sees the last answer.
    fakes["openai"].inject(Status(503), method="POST")
    fakes["anthropic"].inject(Status(529), method="POST")
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "busy?"}])
    assert err.value.status_code == 503
    assert err.value.body["type"] == "server_error"
    assert len(fakes["anthropic"].requests) == 1


def test_usage_and_finish_reason_survive_translation(client, fakes):
    for model, label in (("claude-3-haiku", "fake-anthropic"), ("llama3.2", "fake-ollama")):
        reply = client.chat.completions.create(model=model, max_tokens=3,
                                               messages=[{"role": "user", "content": "a long question here"}])
        assert reply.choices[0].finish_reason == "length"
        assert reply.choices[0].message.content == f"Hello from {label}!"
        assert reply.usage.completion_tokens == 3 and reply.usage.prompt_tokens == 4
        chunks = list(client.chat.completions.create(
            model=model, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "a long question here"}]))
        assert chunks[-1].usage.prompt_tokens == 4 and chunks[-1].usage.completion_tokens > 3


@pytest.fixture()
def cached_prompt(fakes):
    """Ollama answers as for a prompt served whole from its cache: without prompt_eval_count."""
    fakes["ollama"].omit_counts = frozenset({"prompt_eval_count"})
    yield
    fakes["ollama"].omit_counts = frozenset()


def _ask_ollama(client, api: str):
    if api == "embeddings":
        return client.embeddings.create(model="llama3.2", input="cached").usage
    messages = [{"role": "user", "content": "cached"}]
    if api == "stream":
        chunks = list(client.chat.completions.create(model="llama3.2", messages=messages, stream=True,
                                                     stream_options={"include_usage": True}))
        return chunks[-1].usage
    return client.chat.completions.create(model="llama3.2", messages=messages).usage


@pytest.mark.parametrize("api", ["json", "stream", "embeddings"])
def test_an_ollama_answer_without_prompt_eval_count_has_unknown_input_tokens_never_zero(gateway, client, cached_prompt,
                                                                                      api):
    labels = {"route": "/v1/embeddings" if api == "embeddings" else "/v1/chat/completions",
              "provider": "ollama", "model": "llama3.2"}
    time.sleep(LOG_FLUSH)  # what the access log counts of earlier tests' answers has arrived
    unknown = gateway.metric("hapax_usage_unknown_total", **labels, gen_ai_token_type="input")
    inputs = gateway.metric("gen_ai_client_token_usage_count", **labels, gen_ai_token_type="input")
    outputs = gateway.metric("gen_ai_client_token_usage_count", **labels, gen_ai_token_type="output")
    usage = _ask_ollama(client, api)
    # The client is told no count rather than a count of 0.
    assert usage.prompt_tokens is None and usage.total_tokens is None
    wait_for(lambda: gateway.metric("hapax_usage_unknown_total", **labels, gen_ai_token_type="input") == unknown + 1,
             "the missing count counted as unknown")
    assert gateway.metric("gen_ai_client_token_usage_count", **labels, gen_ai_token_type="input") == inputs
    if api != "embeddings":  # the count Ollama did give is counted
        assert usage.completion_tokens > 0
        assert gateway.metric("gen_ai_client_token_usage_count", **labels, gen_ai_token_type="output") == outputs + 1
