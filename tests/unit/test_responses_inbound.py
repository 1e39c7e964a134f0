"""OpenAI's Responses API in: its requests as the canonical chat (or as they came, to OpenAI), chat
answers as Responses, and an OpenAI provider's own Responses read for their usage and end."""

from __future__ import annotations

import json

import pytest

from ext_proc import client_request
from ext_proc.errors import GatewayError
from ext_proc.inbound.responses_answer import ResponsesStage
from ext_proc.inbound.responses_request import chat_body
from ext_proc.outcomes import StreamOutcome
from ext_proc.sse import SseParser
from ext_proc.translators.openai_responses import ResponsesPassStage
from hapax.wire import Handler
from tests.translator_helpers import make_provider

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": True}


def test_a_responses_request_becomes_the_canonical_chat():
    translated = chat_body({
        "model": "m", "instructions": "Be brief.", "max_output_tokens": 200, "temperature": 0.3, "stream": True,
        "input": [
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather in Paris?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
        "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low"}, "parallel_tool_calls": False, "store": False, "metadata": {"a": "b"}})
    chat = translated.chat
    assert translated.untranslatable == ""
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}}]},
        # the words said and the call made in one turn are one assistant message
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["parameters"], "description": "Weather in a city",
        "strict": True}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "w", "schema": {"type": "object"}, "strict": True}}
    assert (chat["max_completion_tokens"], chat["temperature"], chat["reasoning_effort"],
            chat["parallel_tool_calls"]) == (200, 0.3, "low", False)
    assert chat["stream"] and chat["stream_options"] == {"include_usage": True}  # response.completed's usage
    assert "metadata" not in chat and "store" not in chat


def test_a_string_input_is_one_user_message():
    assert chat_body({"model": "m", "input": "hi"}).chat["messages"] == [{"role": "user", "content": "hi"}]


def test_the_parsed_request_keeps_the_clients_body_for_a_provider_that_speaks_its_api():
    raw = {"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_1",
           "tools": [{"type": "web_search"}], "include": ["reasoning.encrypted_content"]}
    req = client_request.parse(Handler.RESPONSES, json.dumps(raw).encode())
    assert (req.handler, req.model, req.stream, req.as_sent) == (Handler.CHAT, "gpt-4o", False, raw)
    # What only OpenAI can serve is not a 400 here: it is, for a provider that must translate it.
    assert req.untranslatable == ("'previous_response_id', the 'web_search' tool need a provider that speaks the "
                                  "Responses API itself (it holds the state or runs the tool; this gateway keeps "
                                  "no responses)")


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": "x"}, "model", "missing_required_parameter"),
    ({"model": "m"}, "input", "missing_required_parameter"),
    ({"model": "m", "input": "x", "messages": []}, "messages", "unknown_parameter"),
    ({"model": "m", "input": "x", "max_tokens": 5}, "max_tokens", "unknown_parameter"),
    ({"model": "m", "input": "x", "max_output_tokens": 8}, "max_output_tokens", "integer_below_min_value"),
    ({"model": "m", "input": "x", "temperature": 2.5}, "temperature", "invalid_value"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream", "invalid_type"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id",
     "missing_required_parameter"),
    # a chat-shaped tool (nested under "function") is not a Responses tool, as OpenAI says
    ({"model": "m", "input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].name",
     "missing_required_parameter"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
])
def test_what_the_responses_api_refuses_is_openais_400_naming_the_parameter(body, param, code):
    with pytest.raises(GatewayError) as refused:
        chat_body(body)
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, param, code)


def _stage(request: dict | None = None) -> ResponsesStage:
    return ResponsesStage(request or {"model": "m", "input": "x"})


def test_a_chat_answer_becomes_a_response_with_its_items_status_usage_and_the_requests_settings():
    stage = _stage({"model": "m", "input": "x", "instructions": "Be brief.", "tools": [WEATHER],
                    "max_output_tokens": 50})
    stage.headers(200, "application/json")
    chat = {"id": "chatcmpl-7", "created": 1700000000, "model": "claude-x", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "reasoning_content": "They want weather.",
            "tool_calls": [{"id": "call_9", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "prompt_tokens_details": {"cached_tokens": 4}}}
    response = json.loads(stage.body(json.dumps(chat).encode(), True))
    assert (response["id"], response["object"], response["status"], response["model"], response["created_at"]) == (
        "resp_7", "response", "completed", "claude-x", 1700000000)
    assert [item["type"] for item in response["output"]] == ["reasoning", "message", "function_call"]
    assert response["output"][0]["content"] == [{"type": "reasoning_text", "text": "They want weather."}]
    assert response["output"][1]["content"][0]["text"] == "Let me look."
    call = response["output"][2]
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == (
        "call_9", "get_weather", '{"city":"Oslo"}', "completed")
    assert response["usage"] == {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4},
                                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                                 "total_tokens": 18}
    assert (response["instructions"], response["tools"], response["max_output_tokens"]) == (
        "Be brief.", [WEATHER], 50)


def test_an_answer_cut_at_its_token_limit_is_an_incomplete_response():
    stage = _stage()
    stage.headers(200, "application/json")
    chat = {"id": "c", "model": "m", "choices": [{"message": {"content": "Hel"}, "finish_reason": "length"}]}
    response = json.loads(stage.body(json.dumps(chat).encode(), True))
    assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})


def _events(stage: ResponsesStage, chunks: list[dict]) -> list[dict]:
    stage.headers(200, "text/event-stream")
    raw = b"".join(stage.body(f"data: {json.dumps(c)}\n\n".encode(), False) for c in chunks)
    raw += stage.body(b"data: [DONE]\n\n", True)
    events = SseParser().feed(raw)
    assert all(e.event == json.loads(e.data)["type"] for e in events)  # the event line names the data's type
    return [json.loads(e.data) for e in events]


def test_chat_chunks_become_the_responses_event_sequence():
    head = {"id": "chatcmpl-1", "model": "gpt-x", "created": 1}
    events = _events(_stage(), [
        {**head, "choices": [{"delta": {"role": "assistant", "content": "Hi"}}]},
        {**head, "choices": [{"delta": {"content": " there"}}]},
        {**head, "choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {
            "name": "f", "arguments": ""}}]}}]},
        {**head, "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}]},
        {**head, "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {**head, "choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["id"] == "resp_1"
    assert events[6]["text"] == "Hi there"
    assert events[12] == {"type": "response.function_call_arguments.done", "sequence_number": 12,
                          "item_id": events[9]["item"]["id"], "output_index": 1, "name": "f", "arguments": '{"a":1}'}
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["usage"]["input_tokens"] == 5 and done["usage"]["output_tokens"] == 9
    assert [item["type"] for item in done["output"]] == ["message", "function_call"]
    assert done["output"][1]["call_id"] == "call_1"


def test_a_provider_failing_mid_stream_is_an_error_event_and_a_failed_response():
    events = _events(_stage(), [{"id": "c", "model": "m", "choices": [{"delta": {"content": "Hi"}}]},
                                {"error": {"message": "provider went away", "type": "server_error"}}])
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["message"] == "provider went away"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "provider went away"}


def test_a_provider_error_passes_as_openais_error_json():
    stage = _stage()
    stage.headers(429, "application/json")
    error = {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}}
    assert json.loads(stage.body(json.dumps(error).encode(), True)) == error


PROVIDER = make_provider("openai", "oa", "gpt-4o", "http://oa/v1", api_key="k", base_path="/v1")


def test_an_openai_providers_response_passes_as_it_came_and_its_usage_is_read():
    stage = ResponsesPassStage(PROVIDER)
    stage.headers(200, "application/json")
    answer = json.dumps({"id": "resp_1", "object": "response", "status": "completed", "output": [],
                         "usage": {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15,
                                   "input_tokens_details": {"cached_tokens": 8}}}).encode()
    assert stage.body(answer, True) == answer
    assert stage.usage == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                           "prompt_tokens_details": {"cached_tokens": 8}}


def test_an_openai_providers_stream_ends_at_response_completed_and_a_cut_one_gets_an_error_event():
    completed = ResponsesPassStage(PROVIDER)
    completed.headers(200, "text/event-stream")
    raw = (b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
           b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1,'
           b'"response":{"usage":{"input_tokens":2,"output_tokens":4}}}\n\n')
    assert completed.body(raw, True) == raw
    assert completed.stream_outcome == StreamOutcome.COMPLETED
    assert completed.usage is not None and completed.usage["completion_tokens"] == 4

    cut = ResponsesPassStage(PROVIDER)
    cut.headers(200, "text/event-stream")
    out = cut.body(b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n', True)
    last = SseParser().feed(out)[-1]
    assert cut.stream_outcome == StreamOutcome.ENDED_EARLY
    assert last.event == "error" and json.loads(last.data)["sequence_number"] == 1


def test_a_404_from_an_openai_provider_on_the_responses_path_is_a_502_naming_it():
    stage = ResponsesPassStage(PROVIDER)
    stage.headers(404, "application/json")
    body = json.loads(stage.body(b'{"error":{"message":"Invalid URL (POST /v1/responses)"}}', True))
    assert stage.status_override == 502
    assert "'oa'" in body["error"]["message"] and "Responses API" in body["error"]["message"]


def test_what_a_translation_leaves_out_is_reported_unless_it_asks_for_nothing():
    asks = chat_body({"model": "m", "input": "x", "store": True, "metadata": {"a": "b"}, "truncation": "auto",
                      "service_tier": "flex", "include": ["reasoning.encrypted_content"]})
    assert asks.dropped == ("include", "metadata", "service_tier", "store", "truncation")
    defaults = chat_body({"model": "m", "input": "x", "store": False, "metadata": {}, "truncation": "disabled",
                          "service_tier": "auto", "include": []})
    assert defaults.dropped == ()
