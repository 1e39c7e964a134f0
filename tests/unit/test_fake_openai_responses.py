"""The fake OpenAI's Responses API, driven by the official SDK as a client would drive the real one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from hapax.fakes import FakeOpenAI, StreamError

KEY = "test-key"
MODEL = "gpt-4o-mini"
REPLY = "Hello from fake-openai! You said: tell me a joke"
# Strict-mode ready (closed, every property required), as the real API demands of strict tools.
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * len(REPLY.split()),
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0, timeout=5) as sdk:
        yield sdk


async def create(client: AsyncOpenAI, **params: Any) -> Response:
    return await client.responses.create(model=params.pop("model", MODEL), **params)


async def stream_events(client: AsyncOpenAI, **params: Any) -> list[Any]:
    stream = await client.responses.create(model=MODEL, stream=True, **params)
    return [event async for event in stream]


class RawReply:
    """A reply read whole, for what the SDK hides: the wire JSON and the SSE framing."""

    def __init__(self, status: int, headers: dict[str, str], text: str) -> None:
        self.status, self.headers, self.text = status, headers, text

    def json(self) -> Any:
        return json.loads(self.text)


async def raw_post(fake: FakeOpenAI, body: dict[str, Any]) -> RawReply:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.post(f"{fake.base_url}/responses", json=body, headers=headers) as reply:
            return RawReply(reply.status, dict(reply.headers), await reply.text())


# -- the JSON answer ------------------------------------------------------------------------------


async def test_a_string_input_is_answered_with_a_completed_message_and_usage(client):
    response = await create(client, input="tell me a joke")
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.incomplete_details is None and response.error is None
    assert response.output_text == REPLY
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.role == "assistant"
    assert message.status == "completed"
    assert [(part.type, part.annotations) for part in message.content] == [("output_text", [])]
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (4, 9, 13)
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0


async def test_the_wire_answer_has_every_field_the_sdk_requires_and_no_output_text(fake):
    reply = await raw_post(fake, {"model": MODEL, "input": "tell me a joke"})
    body = reply.json()
    # The SDK computes output_text; it is not a field of the wire object.
    assert "output_text" not in body
    parsed = Response.model_validate(body)  # validates, unlike create(), which trusts the server
    assert parsed.output_text == REPLY and parsed.previous_response_id is None
    assert (parsed.tool_choice, parsed.tools, parsed.parallel_tool_calls, parsed.store) == ("auto", [], True, True)


async def test_settings_are_repeated_in_the_answer(client):
    response = await create(client, input="hi", instructions="Be brief.", temperature=0.5, top_p=0.9,
                            max_output_tokens=64, metadata={"run": "7"}, store=False,
                            text={"format": {"type": "text"}, "verbosity": "low"})
    assert (response.instructions, response.temperature, response.top_p) == ("Be brief.", 0.5, 0.9)
    assert (response.max_output_tokens, response.metadata, response.store) == (64, {"run": "7"}, False)
    assert response.text is not None and response.text.verbosity == "low"


async def test_the_last_user_message_is_echoed_from_its_text_parts(client):
    conversation = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "input_text", "text": "first question"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "first answer"}]},
        {"role": "user", "content": [
            {"type": "input_text", "text": "what is"},
            {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "auto"},
            {"type": "input_text", "text": "in this picture"},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # accepted and ignored
    ]
    response = await create(client, input=conversation, instructions="Be kind.")
    assert response.output_text == "Hello from fake-openai! You said: what is in this picture"
    assert response.usage is not None and response.usage.input_tokens == 14  # every text, instructions too


# -- the stream ------------------------------------------------------------------------------------


async def test_the_stream_sends_the_real_event_sequence_numbered_in_order(client):
    events = await stream_events(client, input="tell me a joke")
    assert [event.type for event in events] == TEXT_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    item_id = events[2].item.id
    assert {event.item_id for event in events[3:-2]} == {item_id}
    assert events[2].item.status == "in_progress" and events[-2].item.status == "completed"
    assert events[0].response.status == "in_progress" and events[0].response.usage is None


async def test_streamed_deltas_join_to_the_json_answer_and_completed_carries_usage(client):
    answer = await create(client, input="tell me a joke")
    events = await stream_events(client, input="tell me a joke")
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert all(event.logprobs == [] for event in events if event.type == "response.output_text.delta")
    assert "".join(deltas) == answer.output_text == events[-1].response.output_text
    completed = events[-1].response
    assert completed.status == "completed" and completed.usage == answer.usage


async def test_the_stream_names_each_event_and_ends_without_done(fake):
    reply = await raw_post(fake, {"model": MODEL, "input": "hi", "stream": True})
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    blocks = [block for block in reply.text.split("\n\n") if block]
    assert "[DONE]" not in reply.text
    for block in blocks:
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        TypeAdapter(ResponseStreamEvent).validate_python(data)


# -- function calling -----------------------------------------------------------------------------


async def test_a_function_call_round_trip_ends_in_text(client):
    first = await create(client, input="Paris", tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.id is not None and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"}  # the schema's one required property
    assert first.output_text == "" and first.tools[0].strict is True

    history = [{"role": "user", "content": "Paris"}, call,
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = await create(client, input=history, tools=[WEATHER])
    assert second.output[0].type == "message"
    assert second.output_text == "Hello from fake-openai! You said: Paris"


async def test_a_streamed_function_call_sends_its_arguments_in_pieces(client):
    events = await stream_events(client, input="Paris", tools=[WEATHER])
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        *["response.function_call_arguments.delta"] * 2,
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    added, done = events[2].item, events[-2].item
    assert (added.type, added.arguments, added.status) == ("function_call", "", "in_progress")
    pieces = "".join(event.delta for event in events if event.type == "response.function_call_arguments.delta")
    assert pieces == events[-3].arguments == done.arguments == '{"city": "Paris"}'
    assert events[-1].response.output[0].call_id == done.call_id


async def test_tool_choice_none_answers_in_text_and_a_named_choice_picks_that_function(client):
    assert (await create(client, input="hi", tools=[WEATHER], tool_choice="none")).output[0].type == "message"
    other = {**WEATHER, "name": "get_time"}
    chosen = await create(client, input="hi", tools=[WEATHER, other],
                          tool_choice={"type": "function", "name": "get_time"})
    assert chosen.output[0].name == "get_time"


# -- max_output_tokens ---------------------------------------------------------------------------


LONG = "please tell me a very long story about a dragon who learns to bake bread in the mountains"


async def test_max_output_tokens_cuts_the_reply_and_marks_the_response_incomplete(client):
    response = await create(client, input=LONG, max_output_tokens=16)
    assert response.status == "incomplete" and response.completed_at is None
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.usage is not None and response.usage.output_tokens == 16
    assert len(response.output_text.split()) == 16


async def test_a_cut_stream_ends_with_response_incomplete(client):
    events = await stream_events(client, input=LONG, max_output_tokens=16)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


# -- rejections, in OpenAI's words ------------------------------------------------------------------


def chat_tool() -> dict[str, Any]:
    return {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"]}}


REJECTIONS = [
    pytest.param({"input": "hi", "foo": 1}, "foo", "unknown_parameter", id="unknown-parameter"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}]}, "messages", "unknown_parameter",
                 id="chat-messages"),
    pytest.param({"input": "hi", "max_tokens": 50}, "max_tokens", "unknown_parameter", id="chat-max-tokens"),
    pytest.param({"input": "hi", "response_format": {"type": "json_object"}}, "response_format",
                 "unknown_parameter", id="chat-response-format"),
    pytest.param({"input": "hi", "tools": [chat_tool()]}, "tools[0].name", "missing_required_parameter",
                 id="chat-shaped-tool"),
    pytest.param({"input": "hi", "max_output_tokens": 10}, "max_output_tokens", "integer_below_min_value",
                 id="max-output-tokens-below-16"),
    pytest.param({"input": "hi", "temperature": 3}, "temperature", "decimal_above_max_value",
                 id="temperature-above-2"),
    pytest.param({"input": "hi", "temperature": "hot"}, "temperature", "invalid_type", id="temperature-type"),
    pytest.param({}, "input", "missing_required_parameter", id="missing-input"),
    pytest.param({"input": "hi", "previous_response_id": "resp_123"}, "previous_response_id",
                 "previous_response_not_found", id="unknown-previous-response"),
    pytest.param({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value", id="bad-role"),
    pytest.param({"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]},
                 "input[0].content[0].type", "invalid_value", id="assistant-input-text"),
    pytest.param({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]}, "input",
                 None, id="output-without-call"),
    pytest.param({"input": [{"type": "function_call", "call_id": "call_9", "name": "f", "arguments": "{}"}]},
                 "input", None, id="call-without-output"),
    pytest.param({"input": "hi", "stream_options": {"include_obfuscation": False}}, "stream_options", None,
                 id="stream-options-without-stream"),
    pytest.param({"input": "hi", "text": {"format": {"type": "json_schema", "json_schema": {"name": "x"}}}},
                 "text.format.name", "missing_required_parameter", id="chat-shaped-json-schema"),
    pytest.param({"input": "hi", "tools": [{**WEATHER, "parameters": {"type": "object", "properties": {}}}]},
                 "tools[0].parameters", "invalid_function_parameters", id="strict-tool-not-closed"),
]


@pytest.mark.parametrize(("body", "param", "code"), REJECTIONS)
async def test_what_the_real_api_refuses_is_a_400_naming_the_parameter(client, fake, body, param, code):
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=MODEL, extra_body=body)  # sent as given, past the SDK's typing
    error = caught.value
    assert (error.status_code, error.type, error.param, error.code) == (400, "invalid_request_error", param, code)
    assert fake.requests[-1].path == "/v1/responses"


async def test_the_messages_name_what_is_wrong(fake):
    cases = {
        "Unknown parameter: 'foo'.": {"input": "hi", "foo": 1},
        "Missing required parameter: 'tools[0].name'.": {"input": "hi", "tools": [chat_tool()]},
        "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 10 instead.":
            {"input": "hi", "max_output_tokens": 10},
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead.":
            {"input": "hi", "temperature": 3},
        "Previous response with id 'resp_123' not found.": {"input": "hi", "previous_response_id": "resp_123"},
        "No tool call found for function call output with call_id call_9.":
            {"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]},
    }
    for message, body in cases.items():
        reply = await raw_post(fake, {"model": MODEL, **body})
        assert reply.json()["error"]["message"] == message


async def test_a_missing_model_is_refused(fake):
    reply = await raw_post(fake, {"input": "hi"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "model"


async def test_a_wrong_key_is_a_401(fake):
    sdk = AsyncOpenAI(base_url=fake.base_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk.responses.create(model=MODEL, input="hi")
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


async def test_a_model_the_account_lacks_is_a_404():
    async with FakeOpenAI(serves={"gpt-4o-mini": "chat"}) as fake:
        reply = await raw_post(fake, {"model": "gpt-nope", "input": "hi"})
    assert reply.status == 404 and reply.json()["error"]["code"] == "model_not_found"


# -- the fake's machinery: recording, compression, faults ---------------------------------------------


async def test_each_request_is_recorded_and_the_answer_compressed_when_asked(client, fake):
    raw = await client.responses.with_raw_response.create(model=MODEL, input="hi")
    assert raw.headers.get("content-encoding")  # httpx asks for gzip; the fake obliges
    record = fake.requests[-1]
    assert (record.method, record.path, record.body) == ("POST", "/v1/responses", {"model": MODEL, "input": "hi"})
    assert record.headers["authorization"] == f"Bearer {KEY}"


async def test_an_injected_stream_error_reaches_the_sdk_as_an_error(client, fake):
    # The error event is chat's ({"error": {...}}): the fault hook is per provider, not per endpoint.
    fake.inject(StreamError(after_chunks=3))
    with pytest.raises(openai.APIError, match="Injected fault"):
        await stream_events(client, input="hi")


@pytest.mark.parametrize("body", [
    {"input": "hi", "tools": [{"type": ["function"]}]},
    {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": {"n": 1}}},
    {"input": "hi", "tools": [{**WEATHER, "parameters": {"type": "object", "properties": ["city"]}}]},
    {"input": [{"role": {"r": 1}, "content": "x"}]},
    {"input": [["not", "an", "item"]]},
    {"input": "hi", "include": [{"x": 1}]},
], ids=["tool-type-array", "choice-name-object", "properties-array", "role-object", "item-array", "include-object"])
async def test_odd_json_values_are_400s_never_server_errors(fake, body):
    reply = await raw_post(fake, {"model": MODEL, **body})
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_request_error"
