"""Issue #17 end to end: what the real Anthropic API would refuse or misread, through a real gateway.

The official openai SDK talks to Hapax; Hapax talks to the fake Anthropic API,
which refuses what the real one documents as invalid (tool blocks without
tools, e-mail user ids, unknown fields, ...). Each case runs as a JSON answer
and as a stream, and checks both what the client read and what Anthropic got.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import openai
import pytest

from hapax.fakes import FakeAnthropic
from tests.conftest import gateway_config

KEY = "sk-ant-fidelity"
MODEL = "claude-3-7-sonnet"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    {"role": "user", "content": "Thanks! Summarise that."},
]
PDF = base64.b64encode(b"%PDF-1.7\n% a fake report\n").decode()
CACHED = {"type": "ephemeral"}


@pytest.fixture(scope="module")
def anthropic(fake_host):
    fake = fake_host.start(FakeAnthropic(api_key=KEY, model=MODEL))
    yield fake
    fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def gateway(anthropic, start_gateway):
    config = gateway_config({"anthropic": {"type": "anthropic", "model": MODEL, "api_key": "${ANTHROPIC_API_KEY}",
                                           "base_url": anthropic.base_url}})
    return start_gateway(config, env={"ANTHROPIC_API_KEY": KEY})


@pytest.fixture()
def client(gateway, anthropic):
    anthropic.reset()
    return openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0, timeout=30)


def ask(client: openai.OpenAI, stream: bool, **params: Any) -> dict[str, Any]:
    """The answer as one message (content, reasoning, calls) and its finish_reason, streamed or not."""
    params = {"model": MODEL, **params}
    if not stream:
        choice = client.chat.completions.create(**params).choices[0]
        return {**choice.message.model_dump(exclude_none=True), "finish_reason": choice.finish_reason}
    answer: dict[str, Any] = {}
    for chunk in client.chat.completions.create(stream=True, **params):
        for choice in chunk.choices:
            delta = choice.delta.model_dump(exclude_none=True)
            for key in ("content", "reasoning_content"):
                if delta.get(key):
                    answer[key] = answer.get(key, "") + delta[key]
            if delta.get("function_call"):
                call = answer.setdefault("function_call", {"name": "", "arguments": ""})
                call["name"] += delta["function_call"].get("name") or ""
                call["arguments"] += delta["function_call"].get("arguments") or ""
            answer["finish_reason"] = choice.finish_reason or answer.get("finish_reason")
    return answer


def sent(anthropic: FakeAnthropic) -> dict[str, Any]:
    [request] = [r for r in anthropic.requests if r.path == "/v1/messages"]
    return request.body


STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


@STREAMS
def test_a_tool_history_without_tools_is_answered(client, anthropic, stream):
    answer = ask(client, stream, messages=TOOL_HISTORY)
    assert answer["content"].startswith("Hello from fake-anthropic!")
    assert answer["finish_reason"] == "stop"
    body = sent(anthropic)
    assert [t["name"] for t in body["tools"]] == ["get_weather"] and body["tool_choice"] == {"type": "none"}


@STREAMS
def test_legacy_functions_are_offered_and_answered_as_a_function_call(client, anthropic, stream):
    answer = ask(client, stream, messages=[{"role": "user", "content": "Paris"}],
                 functions=[WEATHER["function"]])
    assert answer["finish_reason"] == "function_call"
    assert answer["function_call"]["name"] == "get_weather"
    assert json.loads(answer["function_call"]["arguments"]) == {"city": "Paris"}
    assert sent(anthropic)["tools"][0]["name"] == "get_weather"


@STREAMS
def test_an_email_user_reaches_anthropic_only_as_an_opaque_id(client, anthropic, stream):
    answer = ask(client, stream, messages=[{"role": "user", "content": "hi"}], user="ada@example.com")
    assert answer["content"] == "Hello from fake-anthropic! You said: hi"
    assert sent(anthropic)["metadata"] == {"user_id": hashlib.sha256(b"ada@example.com").hexdigest()}


@STREAMS
def test_a_json_schema_response_format_is_honoured(client, anthropic, stream):
    answer = ask(client, stream, messages=[{"role": "user", "content": "Lyon"}], response_format={
        "type": "json_schema", "json_schema": {"name": "place", "schema": WEATHER["function"]["parameters"]}})
    assert json.loads(answer["content"]) == {"city": "Lyon"}
    assert answer["finish_reason"] == "stop"
    assert sent(anthropic)["tool_choice"] == {"type": "tool", "name": "json_response"}


@STREAMS
def test_a_pdf_is_sent_as_a_document(client, anthropic, stream):
    answer = ask(client, stream, messages=[{"role": "user", "content": [
        {"type": "file", "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "text", "text": "Summarise the report."}]}])
    assert answer["content"] == "Hello from fake-anthropic! You said: Summarise the report."
    document = sent(anthropic)["messages"][0]["content"][0]
    assert document == {"type": "document", "title": "report.pdf",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}


@STREAMS
def test_cache_control_reaches_anthropic_where_the_client_put_it(client, anthropic, stream):
    answer = ask(client, stream, tools=[{**WEATHER, "cache_control": CACHED}], tool_choice="none", messages=[
        {"role": "system", "content": [{"type": "text", "text": "Long rules.", "cache_control": CACHED}]},
        {"role": "user", "content": [{"type": "text", "text": "A long document.", "cache_control": CACHED},
                                     {"type": "text", "text": "Question?"}]}])
    assert answer["content"].startswith("Hello from fake-anthropic!")
    body = sent(anthropic)
    assert body["system"] == [{"type": "text", "text": "Long rules.", "cache_control": CACHED}]
    assert body["tools"][0]["cache_control"] == CACHED
    assert [b.get("cache_control") for b in body["messages"][0]["content"]] == [CACHED, None]


@STREAMS
def test_reasoning_effort_thinks_and_the_thinking_reads_as_reasoning_content(client, anthropic, stream):
    answer = ask(client, stream, messages=[{"role": "user", "content": "Why?"}], reasoning_effort="low")
    assert answer["reasoning_content"] == "Thinking it over: Why?"
    assert answer["content"] == "Hello from fake-anthropic! You said: Why?"
    body = sent(anthropic)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert body["max_tokens"] > body["thinking"]["budget_tokens"]


def test_what_thinking_cannot_combine_with_is_a_400_from_the_gateway(client, anthropic):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       reasoning_effort="high", temperature=0.2)
    assert err.value.body["param"] == "temperature"
    assert anthropic.requests == []
