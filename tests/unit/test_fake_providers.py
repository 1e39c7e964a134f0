"""The fake providers speak each wire format faithfully and act out faults on real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hapax.fakes import (
    CutStream,
    FakeAnthropic,
    FakeOllama,
    FakeOpenAI,
    Hang,
    Latency,
    Reset,
    Status,
    StreamError,
)

KEY = "test-key"
OPENAI_AUTH = {"Authorization": f"Bearer {KEY}"}
ANTHROPIC_AUTH = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
HELLO = [{"role": "user", "content": "tell me a joke"}]
REPLY = "Hello from fake-openai! You said: tell me a joke"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:
        yield client


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as fake:
        yield fake


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """A fully read (so released) response; .json() still works on it."""
    response = await session.request(method, url, json=payload, headers=headers)
    await response.read()
    return response


async def open_stream(
    session: aiohttp.ClientSession, url: str, payload: Any, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    """A response whose body is left for read_all to consume chunk by chunk."""
    return await session.post(url, json=payload, headers=headers)


async def chat(
    session: aiohttp.ClientSession, fake: FakeOpenAI, **body: Any
) -> aiohttp.ClientResponse:
    payload = {"model": "gpt-4o-mini", "messages": HELLO, **body}
    url = f"{fake.base_url}/chat/completions"
    if payload.get("stream"):
        return await open_stream(session, url, payload, OPENAI_AUTH)
    return await fetch(session, "POST", url, payload, OPENAI_AUTH)


async def message(
    session: aiohttp.ClientSession, fake: FakeAnthropic, **body: Any
) -> aiohttp.ClientResponse:
    payload = {"model": "claude-test", "max_tokens": 100, "messages": HELLO, **body}
    url = f"{fake.base_url}/v1/messages"
    if payload.get("stream"):
        return await open_stream(session, url, payload, ANTHROPIC_AUTH)
    return await fetch(session, "POST", url, payload, ANTHROPIC_AUTH)


async def read_all(response: aiohttp.ClientResponse) -> tuple[bytes, Exception | None]:
    """The body as far as it got, and the transport error that ended it early, if any."""
    body = b""
    try:
        async for chunk in response.content.iter_any():
            body += chunk
    except aiohttp.ClientPayloadError as exc:
        return body, exc
    finally:
        response.release()
    return body, None


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        events.append((name, "\n".join(data)))
    return events


def openai_chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for _, data in sse_events(raw) if data != "[DONE]"]


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.decode().splitlines() if line]


# -- OpenAI ----------------------------------------------------------------------------------


async def test_openai_chat_echoes_last_user_text_with_word_counts(session, openai):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "tell me a joke"}]},
    ]
    response = await chat(session, openai, messages=messages)
    body = await response.json()
    assert response.status == 200
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 9, "total_tokens": 15}


async def test_openai_stream_concatenates_to_non_stream_text(session, openai):
    raw, error = await read_all(await chat(session, openai, stream=True))
    assert error is None
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = openai_chunks(raw)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 8 + ["stop"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == REPLY
    assert "usage" not in chunks[0]


async def test_openai_include_usage_adds_final_usage_chunk(session, openai):
    response = await chat(session, openai, stream=True, stream_options={"include_usage": True})
    chunks = openai_chunks((await read_all(response))[0])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


async def test_openai_max_tokens_truncates_with_length_finish(session, openai):
    body = await (await chat(session, openai, max_tokens=3)).json()
    assert body["choices"][0]["message"]["content"] == "Hello from fake-openai!"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_openai_rejects_malformed_json(session, openai):
    response = await session.post(
        f"{openai.base_url}/chat/completions", data=b"{not json", headers=OPENAI_AUTH
    )
    error = (await response.json())["error"]
    assert response.status == 400
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert openai.requests[-1].raw == b"{not json" and openai.requests[-1].body is None


@pytest.mark.parametrize(
    ("payload", "param"),
    [({"messages": HELLO}, None), ({"model": "gpt-4o-mini"}, "messages")],
)
async def test_openai_rejects_missing_model_or_messages(session, openai, payload, param):
    response = await session.post(
        f"{openai.base_url}/chat/completions", json=payload, headers=OPENAI_AUTH
    )
    error = (await response.json())["error"]
    assert response.status == 400
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_openai_tools_answer_with_one_call_to_the_first_tool(session, openai):
    body = await (await chat(session, openai, tools=[WEATHER_TOOL])).json()
    choice = body["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "tell me a joke"}


async def test_openai_streamed_tool_call_arguments_concatenate(session, openai):
    raw, _ = await read_all(await chat(session, openai, tools=[WEATHER_TOOL], stream=True))
    chunks = openai_chunks(raw)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert all(call["index"] == 0 for call in calls)
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"city": "tell me a joke"}
    assert len(calls) > 2  # the arguments really arrive in pieces
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


CALLED_WEATHER = {"name": "get_weather", "arguments": "{}"}


async def test_openai_answers_in_text_after_a_tool_result(session, openai):
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": CALLED_WEATHER}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = await (await chat(session, openai, messages=messages, tools=[WEATHER_TOOL])).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == REPLY


async def test_openai_legacy_completions_answer_each_prompt(session, openai):
    payload = {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "two words"]}
    response = await fetch(session, "POST", f"{openai.base_url}/completions", payload, OPENAI_AUTH)
    body = await response.json()
    assert body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == [
        "Hello from fake-openai! You said: one",
        "Hello from fake-openai! You said: two words",
    ]
    assert body["usage"]["prompt_tokens"] == 3


async def test_openai_legacy_completion_stream_matches_text(session, openai):
    payload = {"model": "m", "prompt": "hi", "stream": True, "max_tokens": 4}
    response = await open_stream(session, f"{openai.base_url}/completions", payload, OPENAI_AUTH)
    chunks = openai_chunks((await read_all(response))[0])
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello from fake-openai! You"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_openai_embeddings_are_deterministic_per_text(session, openai):
    url = f"{openai.base_url}/embeddings"
    payload = {"model": "text-embedding-3-small", "input": ["a", "b", "a"]}
    body = await (await fetch(session, "POST", url, payload, OPENAI_AUTH)).json()
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert vectors[0] == vectors[2] != vectors[1]
    assert len(vectors[0]) == 8
    encoded = {**payload, "input": "a", "encoding_format": "base64"}
    packed = (await (await fetch(session, "POST", url, encoded, OPENAI_AUTH)).json())["data"][0]
    decoded = struct.unpack("<8f", base64.b64decode(packed["embedding"]))
    assert decoded == pytest.approx(vectors[0], abs=1e-6)


async def test_openai_models_list_the_configured_model(session):
    async with FakeOpenAI(model="gpt-fake") as fake:
        response = await fetch(session, "GET", f"{fake.base_url}/models", headers=OPENAI_AUTH)
        body = await response.json()
    assert fake.base_url.endswith("/v1") and fake.origin == f"http://127.0.0.1:{fake.port}"
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["gpt-fake"]


async def test_openai_with_models_refuses_others_and_the_wrong_endpoint_as_openai_does(session):
    serves = {"gpt-4o": "chat", "text-embedding-3-small": "embeddings"}
    async with FakeOpenAI(serves=serves) as fake:
        async def post(path: str, body: dict) -> tuple[int, dict]:
            response = await fetch(session, "POST", f"{fake.base_url}{path}", body, OPENAI_AUTH)
            return response.status, (await response.json()).get("error") or {}

        ok_chat = await post("/chat/completions", {"model": "gpt-4o", "messages": HELLO})
        ok_embed = await post("/embeddings", {"model": "text-embedding-3-small", "input": "x"})
        unknown = await post("/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
        embed_on_chat = await post("/chat/completions", {"model": "text-embedding-3-small", "messages": HELLO})
        chat_on_embed = await post("/embeddings", {"model": "gpt-4o", "input": "x"})
        listed = await (await fetch(session, "GET", f"{fake.base_url}/models", headers=OPENAI_AUTH)).json()
    assert (ok_chat, ok_embed) == ((200, {}), (200, {}))
    assert unknown[0] == 404 and unknown[1]["code"] == "model_not_found" and "`gpt-4o-mini`" in unknown[1]["message"]
    assert embed_on_chat[0] == 404 and "not a chat model" in embed_on_chat[1]["message"]
    assert chat_on_embed[0] == 400 and chat_on_embed[1]["param"] == "model"
    assert [model["id"] for model in listed["data"]] == ["gpt-4o", "text-embedding-3-small"]


async def test_official_openai_client_reads_fake_replies(openai):
    sdk = pytest.importorskip("openai")
    client = sdk.AsyncOpenAI(base_url=openai.base_url, api_key=KEY, max_retries=0)
    try:
        completion = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, tools=[WEATHER_TOOL], stream=True
        )
        arguments = "".join(
            [chunk.choices[0].delta.tool_calls[0].function.arguments async for chunk in stream]
        )
        embedding = await client.embeddings.create(model="e", input="a")  # asks for base64
    finally:
        await client.close()
    assert completion.choices[0].message.content == REPLY
    assert json.loads(arguments) == {"city": "tell me a joke"}
    assert len(embedding.data[0].embedding) == 8


# -- credentials -----------------------------------------------------------------------------


async def test_wrong_key_gets_401_in_provider_format(session, openai, anthropic):
    assert (await chat(session, openai)).status == 200  # the right key works
    wrong = await fetch(
        session,
        "POST",
        f"{openai.base_url}/chat/completions",
        {"model": "m", "messages": HELLO},
        {"Authorization": "Bearer nope"},
    )
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"] == "invalid_api_key"
    wrong = await fetch(
        session,
        "POST",
        f"{anthropic.base_url}/v1/messages",
        {"model": "m", "max_tokens": 5, "messages": HELLO},
        {**ANTHROPIC_AUTH, "x-api-key": "nope"},
    )
    assert wrong.status == 401
    assert (await wrong.json())["error"]["type"] == "authentication_error"


async def test_missing_key_gets_401_even_on_model_listing(session, openai):
    response = await fetch(session, "GET", f"{openai.base_url}/models")
    assert response.status == 401
    assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_key_check_can_be_disabled(session):
    async with FakeOpenAI(api_key=None) as fake:
        response = await fetch(session, "GET", f"{fake.base_url}/models")
    assert response.status == 200


async def test_unknown_path_gets_404_in_provider_format(session, anthropic):
    response = await fetch(session, "GET", f"{anthropic.origin}/v1/nope", headers=ANTHROPIC_AUTH)
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "not_found_error"


async def test_openai_answers_a_path_it_does_not_serve_as_api_openai_com_does(session, openai):
    response = await fetch(session, "POST", f"{openai.origin}/chat/completions", {"model": "gpt-4o-mini"},
                           headers=OPENAI_AUTH)
    assert response.status == 404
    assert await response.json() == {"error": {"message": "Invalid URL (POST /chat/completions)",
                                               "type": "invalid_request_error", "param": None, "code": None}}


async def test_ollama_answers_a_path_it_does_not_serve_in_plain_text(session, ollama):
    response = await fetch(session, "POST", f"{ollama.origin}/v1/api/chat", {"model": "llama3.2"})
    assert response.status == 404
    assert response.content_type == "text/plain"
    assert await response.text() == "404 page not found"


# -- Anthropic -------------------------------------------------------------------------------


async def test_anthropic_message_shape_and_usage(session, anthropic):
    response = await message(session, anthropic, system="be brief")
    body = await response.json()
    assert response.status == 200
    assert {k: body[k] for k in ("type", "role", "model", "stop_reason", "stop_sequence")} == {
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    assert body["content"] == [
        {"type": "text", "text": "Hello from fake-anthropic! You said: tell me a joke"}
    ]
    assert body["usage"] == {"input_tokens": 6, "output_tokens": 9}


async def test_anthropic_rejects_missing_max_tokens(session, anthropic):
    response = await fetch(
        session,
        "POST",
        f"{anthropic.base_url}/v1/messages",
        {"model": "claude-test", "messages": HELLO},
        ANTHROPIC_AUTH,
    )
    body = await response.json()
    assert response.status == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "x"}, *HELLO],
        [{"role": "assistant", "content": "x"}, *HELLO],
        [*HELLO, *HELLO],
    ],
    ids=["empty", "system-role", "starts-with-assistant", "not-alternating"],
)
async def test_anthropic_rejects_invalid_message_sequences(session, anthropic, messages):
    response = await message(session, anthropic, messages=messages)
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_anthropic_requires_version_header(session, anthropic):
    response = await fetch(
        session,
        "POST",
        f"{anthropic.base_url}/v1/messages",
        {"model": "m", "max_tokens": 5, "messages": HELLO},
        {"x-api-key": KEY},
    )
    assert response.status == 400
    assert "anthropic-version" in (await response.json())["error"]["message"]


async def test_anthropic_stream_follows_the_event_sequence(session, anthropic):
    raw, error = await read_all(await message(session, anthropic, stream=True, max_tokens=4))
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert error is None
    assert names == [
        "message_start", "content_block_start", "ping",
        *["content_block_delta"] * 4,
        "content_block_stop", "message_delta", "message_stop",
    ]
    payloads = [json.loads(data) for _, data in events]
    assert all(payload["type"] == name for name, payload in zip(names, payloads, strict=True))
    assert payloads[0]["message"]["usage"]["input_tokens"] == 4
    text = "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta")
    assert text == "Hello from fake-anthropic! You"
    assert payloads[-2]["delta"]["stop_reason"] == "max_tokens"
    assert payloads[-2]["usage"]["output_tokens"] == 4


async def test_anthropic_tool_use_block_and_streamed_input(session, anthropic):
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {}}}}
    body = await (await message(session, anthropic, tools=[tool])).json()
    block = body["content"][0]
    assert body["stop_reason"] == "tool_use"
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"city": "tell me a joke"})

    raw, _ = await read_all(await message(session, anthropic, tools=[tool], stream=True))
    payloads = [json.loads(data) for _, data in sse_events(raw)]
    start = next(p for p in payloads if p["type"] == "content_block_start")
    opening = start["content_block"]
    assert (opening["type"], opening["name"], opening["input"]) == ("tool_use", "get_weather", {})
    assert opening["id"].startswith("toolu_")
    pieces = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    assert {piece["type"] for piece in pieces} == {"input_json_delta"}
    assert json.loads("".join(p["partial_json"] for p in pieces)) == {"city": "tell me a joke"}
    ending = next(p for p in payloads if p["type"] == "message_delta")
    assert ending["delta"]["stop_reason"] == "tool_use"


async def test_anthropic_models_list_the_configured_model(session, anthropic):
    url = f"{anthropic.base_url}/v1/models"
    response = await fetch(session, "GET", url, headers=ANTHROPIC_AUTH)
    body = await response.json()
    assert [model["id"] for model in body["data"]] == [anthropic.model]
    assert anthropic.base_url == anthropic.origin


# -- Ollama ----------------------------------------------------------------------------------


async def test_ollama_streams_ndjson_by_default(session, ollama):
    payload = {"model": "llama3.2", "messages": HELLO}
    response = await open_stream(session, f"{ollama.base_url}/api/chat", payload)
    lines = ndjson((await read_all(response))[0])
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert [line["done"] for line in lines] == [False] * 9 + [True]
    text = "".join(line["message"]["content"] for line in lines)
    assert text == "Hello from fake-ollama! You said: tell me a joke"
    final = lines[-1]
    assert (final["done_reason"], final["prompt_eval_count"], final["eval_count"]) == ("stop", 4, 9)
    assert final["total_duration"] > 0


async def test_ollama_calls_the_offered_tool_after_a_user_turn_with_object_arguments_and_answers_its_result(
        session, ollama):
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"]}}}
    asked = [{"role": "user", "content": "Weather in Oslo?"}]
    payload = {"model": "llama3.2", "messages": asked, "tools": [weather], "stream": False}
    body = await (await fetch(session, "POST", f"{ollama.base_url}/api/chat", payload)).json()
    [call] = body["message"]["tool_calls"]
    assert call == {"function": {"name": "get_weather", "arguments": {"city": "Weather in Oslo?", "days": 1}}}
    assert body["message"]["content"] == "" and body["done_reason"] == "stop"
    lines = ndjson((await read_all(await open_stream(session, f"{ollama.base_url}/api/chat",
                                                     {**payload, "stream": True})))[0])
    assert lines[0]["message"]["tool_calls"] == [call] and lines[-1]["done"] is True  # one line, whole
    answered = [*asked, body["message"], {"role": "tool", "content": "sunny"}]
    after = await (await fetch(session, "POST", f"{ollama.base_url}/api/chat",
                               {**payload, "messages": answered})).json()
    assert "tool_calls" not in after["message"] and after["message"]["content"]


async def test_ollama_non_stream_is_one_object_and_honours_num_predict(session, ollama):
    payload = {
        "model": "llama3.2:latest",  # the same model as the configured "llama3.2"
        "messages": HELLO,
        "stream": False,
        "options": {"num_predict": 2},
    }
    body = await (await fetch(session, "POST", f"{ollama.base_url}/api/chat", payload)).json()
    assert body["done"] is True
    assert body["message"] == {"role": "assistant", "content": "Hello from"}
    assert (body["done_reason"], body["eval_count"]) == ("length", 2)


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_leaves_out_the_counts_it_is_told_to_as_for_a_cached_prompt(session, stream):
    payload = {"model": "llama3.2", "messages": HELLO, "stream": stream}
    async with FakeOllama(omit_counts=["prompt_eval_count"]) as fake:
        response = await fetch(session, "POST", f"{fake.base_url}/api/chat", payload)
        final = ndjson(await response.read())[-1]
        embedded = await (await fetch(session, "POST", f"{fake.base_url}/api/embed",
                                      {"model": "llama3.2", "input": "x"})).json()
    assert final["done"] is True and final["eval_count"] == 9
    assert "prompt_eval_count" not in final and "prompt_eval_count" not in embedded


async def test_ollama_unknown_model_gets_404(session, ollama):
    payload = {"model": "mistral", "messages": HELLO}
    response = await fetch(session, "POST", f"{ollama.base_url}/api/chat", payload)
    assert response.status == 404
    assert await response.json() == {"error": "model 'mistral' not found"}


async def test_ollama_embed_and_tags(session, ollama):
    payload = {"model": "llama3.2", "input": ["x", "y"]}
    body = await (await fetch(session, "POST", f"{ollama.base_url}/api/embed", payload)).json()
    assert body["model"] == "llama3.2"
    assert len(body["embeddings"]) == 2 and body["embeddings"][0] != body["embeddings"][1]
    tags = await (await fetch(session, "GET", f"{ollama.base_url}/api/tags")).json()
    assert [model["name"] for model in tags["models"]] == ["llama3.2:latest"]


# -- recording -------------------------------------------------------------------------------


async def test_requests_are_recorded_with_lowercased_headers_and_parsed_body(session, openai):
    await chat(session, openai, temperature=0.5)
    record = openai.requests[-1]
    assert (record.method, record.path) == ("POST", "/v1/chat/completions")
    assert record.headers["authorization"] == f"Bearer {KEY}"
    assert record.body["temperature"] == 0.5
    assert json.loads(record.raw) == record.body
    openai.inject(Status(500), times=None)
    openai.reset()
    assert openai.requests == []
    assert (await chat(session, openai)).status == 200


# -- faults ----------------------------------------------------------------------------------


async def test_status_fault_applies_only_to_next_request(session, openai):
    openai.inject(Status(429, retry_after=2))
    limited = await chat(session, openai)
    error = (await limited.json())["error"]
    assert limited.status == 429
    assert limited.headers["retry-after"] == "2"
    assert error["code"] == "rate_limit_exceeded"
    assert (await chat(session, openai)).status == 200
    assert len(openai.requests) == 2


async def test_status_fault_uses_provider_error_format_or_given_body(session, anthropic):
    anthropic.inject(Status(529))
    anthropic.inject(Status(418, body={"custom": True}))
    overloaded = await message(session, anthropic)
    assert overloaded.status == 529
    assert (await overloaded.json())["error"]["type"] == "overloaded_error"
    custom = await message(session, anthropic)
    assert (custom.status, await custom.json()) == (418, {"custom": True})


async def test_fault_without_times_persists_until_cleared(session, ollama):
    ollama.inject(Status(503), times=None)
    for _ in range(3):
        assert (await fetch(session, "GET", f"{ollama.base_url}/api/tags")).status == 503
    ollama.clear_faults()
    assert (await fetch(session, "GET", f"{ollama.base_url}/api/tags")).status == 200


async def test_faults_hit_health_endpoints_too(session, openai):
    openai.inject(Status(503), times=2)
    models = await fetch(session, "GET", f"{openai.base_url}/models", headers=OPENAI_AUTH)
    assert models.status == 503
    assert (await chat(session, openai)).status == 503
    assert (await chat(session, openai)).status == 200


async def test_latency_fault_delays_then_answers(session, openai):
    openai.inject(Latency(0.2))
    started = time.monotonic()
    response = await chat(session, openai)
    assert time.monotonic() - started >= 0.2
    assert (await response.json())["choices"][0]["message"]["content"] == REPLY


async def test_reset_fault_drops_connection_without_response(session, anthropic):
    anthropic.inject(Reset())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await message(session, anthropic)
    assert len(anthropic.requests) == 1  # the request still got recorded
    assert (await message(session, anthropic)).status == 200


async def test_hang_does_not_block_stop(session):
    fake = FakeOpenAI()
    await fake.start()
    fake.inject(Hang())
    pending = asyncio.create_task(chat(session, fake))
    await asyncio.sleep(0.1)
    assert not pending.done()
    started = time.monotonic()
    await fake.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(aiohttp.ClientError):
        await pending


async def test_hang_times_out_the_client_and_only_that_request(session, openai):
    openai.inject(Hang())
    with pytest.raises(asyncio.TimeoutError):
        await session.post(
            f"{openai.base_url}/chat/completions",
            json={"model": "m", "messages": HELLO},
            headers=OPENAI_AUTH,
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert (await chat(session, openai)).status == 200


async def test_cut_stream_ends_without_done_marker(session, openai):
    openai.inject(CutStream(after_chunks=3))
    raw, error = await read_all(await chat(session, openai, stream=True))
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert len(openai_chunks(raw)) == 3
    assert b"[DONE]" not in raw


async def test_cut_stream_without_reset_ends_the_body_cleanly_but_early(session, openai):
    openai.inject(CutStream(after_chunks=3, reset=False))
    raw, error = await read_all(await chat(session, openai, stream=True))
    assert error is None
    assert len(openai_chunks(raw)) == 3
    assert b"[DONE]" not in raw


async def test_cut_stream_on_non_stream_request_resets(session, openai):
    openai.inject(CutStream(after_chunks=3))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await chat(session, openai)


async def test_openai_stream_error_is_a_data_error_event_then_the_end(session, openai):
    openai.inject(StreamError(after_chunks=2))
    raw, error = await read_all(await chat(session, openai, stream=True))
    *chunks, last = [json.loads(data) for _, data in sse_events(raw)]
    assert error is None  # the HTTP body ends cleanly; only the event says it failed
    assert len(chunks) == 2
    assert last["error"]["type"] == "overloaded_error"


async def test_anthropic_stream_error_is_an_error_event_mid_stream(session, anthropic):
    anthropic.inject(StreamError(after_chunks=2, error_type="api_error"))
    raw, error = await read_all(await message(session, anthropic, stream=True))
    events = sse_events(raw)
    assert error is None
    assert [name for name, _ in events] == ["message_start", "content_block_start", "error"]
    error_event = json.loads(events[-1][1])
    assert error_event["type"] == "error"
    assert error_event["error"]["type"] == "api_error" and error_event["error"]["message"]


async def test_ollama_stream_error_is_an_error_line(session, ollama):
    ollama.inject(StreamError(after_chunks=2))
    payload = {"model": "llama3.2", "messages": HELLO}
    raw, error = await read_all(await open_stream(session, f"{ollama.base_url}/api/chat", payload))
    lines = ndjson(raw)
    assert error is None
    assert [line["done"] for line in lines[:2]] == [False, False]
    assert set(lines[2]) == {"error"}


async def test_stream_error_on_non_stream_request_is_an_http_error(session, anthropic):
    anthropic.inject(StreamError(after_chunks=1))
    response = await message(session, anthropic)
    assert response.status == 529
    assert (await response.json())["error"]["type"] == "overloaded_error"


async def test_refused_connections_then_accept_again_on_same_port(session, ollama):
    port = ollama.port
    assert (await fetch(session, "GET", f"{ollama.base_url}/api/tags")).status == 200
    await ollama.refuse_connections()
    with pytest.raises(aiohttp.ClientConnectorError):
        await fetch(session, "GET", f"{ollama.base_url}/api/tags")
    await ollama.accept_connections()
    assert ollama.port == port
    assert (await fetch(session, "GET", f"{ollama.base_url}/api/tags")).status == 200


async def test_chunk_delay_makes_chunks_arrive_over_time(session):
    async with FakeOllama(chunk_delay=0.03) as fake:
        payload = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        response = await open_stream(session, f"{fake.base_url}/api/chat", payload)
        first = await response.content.readline()
        first_at = time.monotonic()
        rest, _ = await read_all(response)
        spread = time.monotonic() - first_at
    assert json.loads(first)["message"]["content"] == "Hello "
    assert len(ndjson(rest)) == 6  # five more words and the final object
    assert spread >= 0.03 * 6  # each line waited its own delay: not sent in one burst


# -- command line ----------------------------------------------------------------------------


def test_main_prints_base_urls_and_exits_cleanly_on_sigterm():
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "hapax.fakes"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            lines = [json.loads(process.stdout.readline()) for _ in range(3)]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            process.kill()  # no-op once it has exited; stops a stuck one
    assert [line["provider"] for line in lines] == ["openai", "anthropic", "ollama"]
    assert lines[0]["base_url"].startswith("http://127.0.0.1:")
    assert lines[0]["base_url"].endswith("/v1")


async def test_a_fault_for_one_method_leaves_other_requests_alone(session, openai):
    openai.inject(Status(503), method="POST")
    async with session.get(f"{openai.base_url}/models", headers=OPENAI_AUTH) as probe:
        assert probe.status == 200  # a health probe neither sees nor uses up the fault
    assert (await chat(session, openai)).status == 503
    assert (await chat(session, openai)).status == 200
