"""Anthropic's Messages API in: its requests as the canonical chat, chat answers as Anthropic's."""

from __future__ import annotations

import json

import pytest

from ext_proc import client_request
from ext_proc.errors import GatewayError
from ext_proc.inbound.count_tokens import estimate
from ext_proc.inbound.messages_answer import MessagesStage, chat_to_message
from ext_proc.inbound.messages_request import chat_body, error_body
from ext_proc.outcomes import StreamOutcome
from ext_proc.sse import SseParser
from ext_proc.translators.anthropic_messages import MessagesPassStage
from hapax.wire import Handler
from tests.translator_helpers import make_provider


def test_a_messages_request_becomes_the_canonical_chat():
    translated = chat_body({
        "model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief.",
                                                     "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "AAAA"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                                         {"type": "text", "text": "thanks"}]}],
        "stop_sequences": ["END"], "temperature": 0.5, "stream": True, "metadata": {"user_id": "u-1"},
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 5000}})
    chat = translated.chat
    assert translated.untranslatable == ""
    assert chat["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "text", "text": "Look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},  # results first, as Anthropic orders them
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]}]
    assert (chat["max_tokens"], chat["stop"], chat["temperature"], chat["user"]) == (100, ["END"], 0.5, "u-1")
    assert chat["stream"] and chat["stream_options"] == {"include_usage": True}  # message_delta's usage
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                               "description": "d"}}]
    assert (chat["tool_choice"], chat["parallel_tool_calls"], chat["reasoning_effort"]) == ("required", False, "low")


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}, "model: Field required"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": 1, "messages": []}, "messages: at least one message is required"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
     "messages.0.role: Input should be 'user' or 'assistant'"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
     "temperature: Input should be between 0 and 1"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "n": 2},
     "n: Extra inputs are not permitted"),
])
def test_what_anthropics_api_refuses_is_a_400(body, message):
    with pytest.raises(GatewayError) as refused:
        chat_body(body)
    assert refused.value.status == 400 and refused.value.message.startswith(message)
    assert json.loads(error_body(refused.value)) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": refused.value.message}}


def test_a_chat_answer_becomes_a_message_with_its_blocks_stop_reason_and_usage():
    message = chat_to_message({
        "id": "chatcmpl-abc", "model": "gpt-4o", "choices": [{"finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 10}}})
    assert message == {
        "id": "msg_abc", "type": "message", "role": "assistant", "model": "gpt-4o",
        "content": [{"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 10}}


def _events(stage: MessagesStage, chunks: list[dict]) -> list[tuple[str, dict]]:
    stage.headers(200, "text/event-stream")
    raw = b"".join(stage.body(f"data: {json.dumps(c)}\n\n".encode(), False) for c in chunks)
    raw += stage.body(b"data: [DONE]\n\n", True)
    return [(e.event, json.loads(e.data)) for e in SseParser().feed(raw)]


def test_chat_chunks_become_anthropics_event_sequence_one_block_at_a_time():
    head = {"id": "chatcmpl-1", "model": "gpt-4o"}
    events = _events(MessagesStage(), [
        {**head, "choices": [{"delta": {"role": "assistant", "content": "Hi"}}]},
        {**head, "choices": [{"delta": {"content": " there"}}]},
        {**head, "choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {
            "name": "f", "arguments": ""}}]}}]},
        {**head, "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}]},
        {**head, "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {**head, "choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}])
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert events[0][1]["message"]["id"] == "msg_1"
    assert events[5][1] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "f", "input": {}}}
    assert events[6][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":'}
    assert events[9][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                            "usage": {"input_tokens": 5, "output_tokens": 9}}


def test_a_provider_error_is_anthropics_error_shape_json_or_mid_stream():
    stage = MessagesStage()
    stage.headers(429, "application/json")
    body = stage.body(json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode(), True)
    assert json.loads(body) == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    events = _events(MessagesStage(), [{"id": "c", "choices": [{"delta": {"content": "Hi"}}]},
                                       {"error": {"message": "provider went away", "type": "server_error"}}])
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error",
                                                               "message": "provider went away"}})
    assert "message_stop" not in [name for name, _ in events]


def test_what_only_anthropic_runs_is_kept_for_it_and_named_for_a_provider_that_must_translate():
    raw = {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "news?"}],
           "tools": [{"type": "web_search_20250305", "name": "web_search"}, {"name": "f", "input_schema": {}}],
           "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}
    req = client_request.parse(Handler.MESSAGES, json.dumps(raw).encode())
    assert req.as_sent == raw  # an Anthropic provider gets it all, as it came
    assert [t["function"]["name"] for t in req.body["tools"]] == ["f"]  # the client's own tool translates
    assert req.untranslatable == ("'mcp_servers', the server tool 'web_search_20250305' need a provider that "
                                  "speaks the Messages API itself (Anthropic runs it)")


ANTHROPIC = make_provider("anthropic", "an", "claude-x", "http://an", api_key="k", base_path="")


def test_an_anthropic_providers_stream_passes_as_it_came_and_its_usage_is_read_from_start_and_delta():
    stage = MessagesPassStage(ANTHROPIC)
    stage.headers(200, "text/event-stream")
    raw = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":10,'
           b'"cache_read_input_tokens":4,"output_tokens":1}}}\n\n'
           b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
           b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
           b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
           b'"usage":{"output_tokens":7}}\n\n'
           b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert stage.body(raw[:50], False) + stage.body(raw[50:], True) == raw
    assert stage.stream_outcome == StreamOutcome.COMPLETED
    # prompt tokens include the cache reads, as a translated answer's do
    assert stage.usage == {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21,
                           "prompt_tokens_details": {"cached_tokens": 4}}


def test_an_anthropic_stream_cut_short_ends_with_anthropics_error_event():
    stage = MessagesPassStage(ANTHROPIC)
    stage.headers(200, "text/event-stream")
    out = stage.body(b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n', True)
    last = SseParser().feed(out)[-1]
    assert stage.stream_outcome == StreamOutcome.ENDED_EARLY
    assert last.event == "error" and json.loads(last.data)["error"]["type"] == "api_error"


def test_a_404_from_an_anthropic_provider_is_a_502_naming_it_in_anthropics_shape():
    stage = MessagesPassStage(ANTHROPIC)
    stage.headers(404, "application/json")
    body = json.loads(stage.body(b'{"type":"error","error":{"type":"not_found_error","message":"no"}}', True))
    assert stage.status_override == 502
    assert body["type"] == "error" and body["error"]["type"] == "api_error" and "'an'" in body["error"]["message"]


def test_a_token_count_request_is_the_prompt_as_a_chat_and_refuses_the_answers_fields():
    raw = {"model": "claude-x", "system": "Be brief.", "messages": [{"role": "user", "content": "hello"}]}
    req = client_request.parse(Handler.COUNT_TOKENS, json.dumps(raw).encode())
    assert (req.handler, req.model, req.stream, req.as_sent) == (Handler.COUNT_TOKENS, "claude-x", False, raw)
    assert req.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    with pytest.raises(GatewayError) as refused:
        client_request.parse(Handler.COUNT_TOKENS, json.dumps({**raw, "max_tokens": 5}).encode())
    assert refused.value.message == "max_tokens: Extra inputs are not permitted"


def test_the_gateways_token_estimate_grows_with_the_words_images_and_tools_and_errs_high():
    text = "word " * 400  # 2,000 characters: about 400 to 500 tokens by any tokenizer of English
    base = estimate({"messages": [{"role": "user", "content": text}]})
    assert base == 4 + 500
    with_image = estimate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]})
    assert with_image == base + 1600
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert estimate({"messages": [{"role": "user", "content": text}], "tools": [tool]}) > base


def test_what_a_messages_translation_leaves_out_is_reported_unless_it_asks_for_nothing():
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert chat_body({**body, "top_k": 5, "service_tier": "standard_only"}).dropped == ("service_tier", "top_k")
    assert chat_body({**body, "service_tier": "auto"}).dropped == ()
