"""Issue #17, "a silent drop is a bug", through a real gateway with the official openai SDK.

A field the provider is not sent is named in ``x-hapax-dropped-params`` on the answer, JSON
or stream, whether the router step saw the request (``model: ""``) or the model lane took
it (the provider's own model, or ``auto``); a field whose answer the provider could not give is a 400
naming it. The strict Anthropic fake refuses unknown fields, so an answer from it also
proves the dropped fields were not sent.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from hapax.fakes import FakeAnthropic, FakeOllama
from hapax.wire import DROPPED_PARAMS_HEADER
from tests.conftest import gateway_config

CLAUDE, LLAMA = "claude-3-haiku", "llama3.2"
CLAUDE_KEY = "sk-ant-dropped"
HI = [{"role": "user", "content": "hi"}]
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


@pytest.fixture(scope="module")
def fakes(fake_host):
    providers = (fake_host.start(FakeAnthropic(api_key=CLAUDE_KEY, model=CLAUDE)),
                 fake_host.start(FakeOllama(model=LLAMA)))
    yield providers
    for fake in providers:
        fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    claude, llama = fakes
    # Ollama first: a request with an empty model (auto, but no lane routes on it) reaches it through
    # the router step; a model name, or "auto", takes the model lane.
    return start_gateway(gateway_config(
        {"llama": {"type": "ollama", "model": LLAMA, "base_url": llama.base_url},
         "claude": {"type": "anthropic", "model": CLAUDE, "api_key": CLAUDE_KEY, "base_url": claude.origin}},
        preference=["llama", "claude"]))


@pytest.fixture()
def client(gateway, fakes):
    for fake in fakes:
        fake.reset()
    return openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0, timeout=30)


def chat(client: openai.OpenAI, stream: bool, **params: Any) -> tuple[str, str | None]:
    """The answer's text (read to its end) and its x-hapax-dropped-params header."""
    raw = client.chat.completions.with_raw_response.create(stream=stream, **params)
    if not stream:
        text = raw.parse().choices[0].message.content or ""
    else:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return text, raw.headers.get(DROPPED_PARAMS_HEADER)


@STREAMS
@pytest.mark.parametrize("model", ["", "auto", LLAMA], ids=["router-step", "auto-model-lane", "model-lane"])
def test_ollama_names_what_it_was_not_sent(client, fakes, stream, model):
    text, dropped = chat(client, stream, model=model, messages=HI, seed=7, user="ada", logit_bias={"50256": -100},
                         extra_body={"top_k": 5})
    assert text.startswith("Hello from fake-ollama")
    assert dropped == "logit_bias, top_k, user"
    sent = fakes[1].requests[-1].body
    assert sent["options"]["seed"] == 7 and "user" not in sent and "logit_bias" not in sent


@STREAMS
def test_anthropic_names_what_it_was_not_sent(client, fakes, stream):
    text, dropped = chat(client, stream, model=CLAUDE, messages=HI, seed=7, frequency_penalty=0.5, stop=["\n", "END"],
                         store=True)
    assert text.startswith("Hello from fake-anthropic")  # the strict fake took the body: nothing unknown in it
    assert dropped == "frequency_penalty, seed, stop, store"
    assert fakes[0].requests[-1].body["stop_sequences"] == ["END"]


@STREAMS
def test_an_answer_without_drops_has_no_header(client, stream):
    _, dropped = chat(client, stream, model=CLAUDE, messages=HI, temperature=0.2, stop="END")
    assert dropped is None


@pytest.mark.parametrize("model, field, params", [
    (CLAUDE, "n", {"n": 2}), (CLAUDE, "logprobs", {"logprobs": True}),
    (LLAMA, "top_logprobs", {"top_logprobs": 2}),
    (LLAMA, "functions", {"functions": [{"name": "f", "parameters": {"type": "object"}}]})])
def test_a_field_whose_answer_the_provider_cannot_give_is_a_400_naming_it(client, fakes, model, field, params):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=HI, **params)
    assert err.value.param == field
    assert not [r for r in fakes[0].requests + fakes[1].requests if r.method == "POST"]


@STREAMS
def test_a_legacy_completion_names_what_it_was_not_sent(client, stream):
    raw = client.completions.with_raw_response.create(model=CLAUDE, prompt="hi", seed=3, stream=stream)
    answer = raw.parse()
    text = answer.choices[0].text if not stream else "".join(c.choices[0].text for c in answer if c.choices)
    assert text.startswith("Hello from fake-anthropic")
    assert raw.headers.get(DROPPED_PARAMS_HEADER) == "seed"


def test_a_legacy_field_a_chat_cannot_express_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=CLAUDE, prompt="def f(", suffix="\n    return 1")
    assert err.value.param == "suffix"


def test_ollama_embeddings_name_what_they_were_not_sent(client, fakes):
    raw = client.embeddings.with_raw_response.create(model=LLAMA, input="hi", user="ada", dimensions=8)
    assert raw.parse().data[0].embedding
    assert raw.headers.get(DROPPED_PARAMS_HEADER) == "user"
    assert fakes[1].requests[-1].body["dimensions"] == 8
