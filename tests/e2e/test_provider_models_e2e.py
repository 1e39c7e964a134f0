"""One provider entry, several models, for real: the official ``openai`` SDK against fakes.

The OpenAI fake has one account serving two chat models and an embeddings model,
and refuses any other model, or a model on the wrong endpoint, as OpenAI does: a
request sent the wrong model fails. Anthropic (no embeddings) is second in the
preference order: chat fails over to it, embeddings never do.
"""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from hapax.fakes import FakeAnthropic, FakeOpenAI
from hapax.fakes.faults import Status
from tests.conftest import gateway_config

OPENAI_KEY = "sk-models-openai"
CLAUDE_KEY = "sk-ant-models"
EMBEDDING_MODEL = "text-embedding-3-small"
SERVED = {"gpt-4o-mini": "chat", "gpt-4o": "chat", EMBEDDING_MODEL: "embeddings"}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(FakeOpenAI(api_key=OPENAI_KEY, serves=SERVED),
                           FakeAnthropic(api_key=CLAUDE_KEY, model="claude-3-haiku")) as started:
        yield started


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    account, claude = fakes
    return start_gateway(gateway_config({
        "openai": {"type": "openai", "api_key": OPENAI_KEY, "base_url": account.base_url,
                   "model": "gpt-4o-mini",  # the default chat model
                   "models": {EMBEDDING_MODEL: {"handler": "embeddings"}, "gpt-4o": {}}},
        "claude": {"type": "anthropic", "model": "claude-3-haiku", "api_key": CLAUDE_KEY, "base_url": claude.origin},
    }, preference=["openai", "claude"]))  # the default routes: chat, completion, embeddings, models


@pytest.fixture()
def client(gateway, fakes):
    for fake in fakes:
        fake.reset()
    return openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0, timeout=30)


def models_sent(fake) -> list[str]:
    return [r.body["model"] for r in fake.requests if r.method == "POST"]


def test_auto_embeddings_and_auto_chat_go_through_one_provider_entry_with_two_models(client, fakes):
    account, _ = fakes
    embedded = client.embeddings.create(model="auto", input="hello")
    chat = client.chat.completions.create(model="auto", messages=HELLO)
    assert len(embedded.data[0].embedding) > 0
    assert chat.choices[0].message.content
    # Each request got the provider's model of its kind: the fake refuses any other.
    assert models_sent(account) == [EMBEDDING_MODEL, "gpt-4o-mini"]


def test_a_request_naming_a_listed_model_is_sent_that_model(client, fakes):
    account, _ = fakes
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    streamed = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    client.embeddings.create(model=EMBEDDING_MODEL, input="hello")
    assert streamed and all(chunk.model == "gpt-4o" for chunk in streamed if chunk.choices)
    assert models_sent(account) == ["gpt-4o", "gpt-4o", EMBEDDING_MODEL]


def test_a_model_of_the_other_kind_is_refused_by_the_gateway_not_sent(client, fakes):
    account, _ = fakes
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=HELLO)
    with pytest.raises(openai.BadRequestError) as embeddings:
        client.embeddings.create(model="gpt-4o", input="hello")
    assert chat.value.code == embeddings.value.code == "model_not_supported"
    assert "is an embeddings model" in chat.value.message
    assert models_sent(account) == []


def test_models_lists_every_model_each_provider_serves(gateway):
    with urllib.request.urlopen(f"{gateway.base_url}/models", timeout=10) as response:
        listed = {entry["id"]: entry["owned_by"] for entry in json.load(response)["data"]}
    assert listed == {"gpt-4o-mini": "openai", "gpt-4o": "openai", EMBEDDING_MODEL: "openai",
                      "claude-3-haiku": "claude"}


# Last: the failing provider may stay ejected for a while.
def test_chat_fails_over_to_a_chat_provider_and_embeddings_never_to_one_without_embeddings(client, fakes):
    account, claude = fakes
    account.inject(Status(503), times=None, method="POST")
    chat = client.chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.APIStatusError) as embeddings:
        client.embeddings.create(model="auto", input="hello")
    # Claude was sent its own model for the chat, and no embeddings request at all.
    assert chat.choices[0].message.content
    assert models_sent(claude) == ["claude-3-haiku"]
    assert embeddings.value.status_code == 503
    assert set(models_sent(account)) == {"gpt-4o", EMBEDDING_MODEL}
