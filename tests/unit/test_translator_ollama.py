"""OllamaTranslator: OpenAI chat/embeddings <-> Ollama native API, golden and property tests.

Provider-side fixtures follow the shapes in Ollama's API documentation
(docs/api.md: /api/chat JSON and NDJSON stream, /api/embed, {"error": ...}).
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.client_request import ClientRequest
from ext_proc.errors import GatewayError
from ext_proc.runtime import Provider
from ext_proc.translators.ollama import OllamaTranslator
from tests.translator_helpers import (
    NOW,
    assert_one_stream,
    chat_requests,
    client_request,
    make_provider,
    pieces_of,
    run_stage,
    sse_events,
    user,
)


def provider(api_key: str = "", base_path: str = "") -> Provider:
    return make_provider("ollama", "local", "llama3.2", "http://localhost:11434",
                         api_key=api_key, base_path=base_path)


def chat(body: dict[str, Any], *, stream: bool = False, handler: str = "chat") -> ClientRequest:
    return client_request("llama3.2", body, stream=stream, handler=handler)


def embeddings(body: dict[str, Any]) -> ClientRequest:
    return client_request("llama3.2", body, handler="embeddings")


def translator() -> OllamaTranslator:
    return OllamaTranslator(clock=lambda: NOW + 0.4, new_id=lambda: "0123456789abcdef0123456789abcdef")


def translate(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return json.loads(translator().request(chat(body, **kw), provider()).body)


# ------------------------------------------------------------------ request mapping


def test_chat_request_targets_api_chat_without_credentials():
    out = translator().request(chat({"messages": [user("why is the sky blue?")]}), provider(base_path="/ollama"))
    assert out.path == "/ollama/api/chat"
    assert "authorization" not in out.set_headers
    assert json.loads(out.body) == {"model": "llama3.2", "stream": False,
                                    "messages": [{"role": "user", "content": "why is the sky blue?"}]}


@pytest.mark.parametrize("stream", [False, True])
def test_stream_flag_is_always_explicit(stream):
    assert translate({"messages": [user("hi")]}, stream=stream)["stream"] is stream


def test_api_key_becomes_bearer_for_a_proxied_ollama():
    out = translator().request(chat({"messages": [user("hi")]}), provider(api_key="secret"))
    assert out.set_headers["authorization"] == "Bearer secret"


def test_completion_handler_is_translated_exactly_like_chat():
    body = {"messages": [user("hi")], "max_tokens": 5}
    assert translator().request(chat(body, handler="completion"), provider()) == \
        translator().request(chat(body), provider())


def test_system_and_developer_become_system_role_and_parts_are_joined():
    body = translate({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": [{"type": "text", "text": "line one"}, {"type": "text", "text": "line two"}]},
    ]})
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "line one\nline two"},
    ]


def test_data_url_images_become_base64_images():
    body = translate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]})
    assert body["messages"] == [{"role": "user", "content": "what is in this image?",
                                 "images": ["iVBORw0KGgo="]}]


def test_linked_images_cannot_be_expressed():
    with pytest.raises(GatewayError) as err:
        translate({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert err.value.status == 400


def test_sampling_parameters_go_into_options():
    body = translate({"messages": [user("hi")], "temperature": 0.2, "top_p": 0.8, "max_tokens": 100,
                      "stop": "END", "seed": 42})
    assert body["options"] == {"temperature": 0.2, "top_p": 0.8, "num_predict": 100, "stop": ["END"],
                               "seed": 42}


def test_max_completion_tokens_becomes_num_predict_and_stop_list_is_kept():
    body = translate({"messages": [user("hi")], "max_completion_tokens": 9, "stop": ["\n", "user:"]})
    assert body["options"] == {"num_predict": 9, "stop": ["\n", "user:"]}


def test_no_options_when_no_sampling_parameters():
    assert "options" not in translate({"messages": [user("hi")]})


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather for a location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}


def test_tools_pass_through_and_tool_calls_arguments_become_objects():
    body = translate({"tools": [WEATHER_TOOL], "messages": [
        user("What is the weather today in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_current_weather", "arguments": '{"location": "Paris, FR"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_current_weather", "arguments": "{oops"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
    ]})
    assert body["tools"] == [WEATHER_TOOL]
    assert body["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_current_weather", "arguments": {"location": "Paris, FR"}}},
        {"function": {"name": "get_current_weather", "arguments": {}}},
    ]}
    assert body["messages"][2] == {"role": "tool", "content": "22C", "tool_name": "get_current_weather"}


def test_tool_choice_none_withholds_the_tools():
    assert "tools" not in translate({"messages": [user("hi")], "tools": [WEATHER_TOOL], "tool_choice": "none"})


OTHER_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.mark.parametrize("choice, offered", [
    ("required", [WEATHER_TOOL, OTHER_TOOL]),
    ({"type": "function", "function": {"name": "get_time"}}, [OTHER_TOOL]),  # alone: no other can be called
    ({"type": "function", "function": {"name": "unknown"}}, [WEATHER_TOOL, OTHER_TOOL]),
])
def test_a_forced_tool_call_cannot_be_expressed_and_is_reported(choice, offered):
    out = translator().request(chat({"messages": [user("hi")], "tools": [WEATHER_TOOL, OTHER_TOOL],
                                     "tool_choice": choice}), provider())
    assert json.loads(out.body)["tools"] == offered
    assert out.dropped == ("tool_choice",)


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_a_tool_choice_ollama_honours_is_not_reported(choice):
    out = translator().request(chat({"messages": [user("hi")], "tools": [WEATHER_TOOL], "tool_choice": choice}),
                               provider())
    assert out.dropped == ()


def test_fields_ollama_lacks_are_reported_and_not_sent():
    out = translator().request(chat({"messages": [user("hi")], "tools": [WEATHER_TOOL],
                                     "parallel_tool_calls": False, "user": "ada", "safety_identifier": "x",
                                     "logit_bias": {"1": 5}, "prompt_cache_key": "k", "top_k": 5}), provider())
    assert out.dropped == ("logit_bias", "parallel_tool_calls", "prompt_cache_key", "safety_identifier",
                           "top_k", "user")
    assert set(json.loads(out.body)) == {"model", "messages", "stream", "tools"}


def test_a_message_key_ollama_has_no_place_for_is_reported():
    out = translator().request(chat({"messages": [
        {"role": "system", "content": "be brief", "name": "policy", "cache_control": {"type": "ephemeral"}},
        user("hi")]}), provider())
    assert out.dropped == ("messages[].name",)  # a cache breakpoint needs no translation


@pytest.mark.parametrize("field, value", [
    ("logprobs", True), ("top_logprobs", 3), ("modalities", ["audio"]), ("audio", {"voice": "alloy"}),
    ("web_search_options", {}), ("functions", [WEATHER_TOOL["function"]]), ("function_call", "auto")])
def test_a_field_whose_answer_ollama_cannot_give_is_a_400_naming_it(field, value):
    with pytest.raises(GatewayError) as err:
        translate({"messages": [user("hi")], field: value})
    assert err.value.status == 400 and err.value.param == field


def test_n_above_one_cannot_be_expressed():
    with pytest.raises(GatewayError) as err:
        translate({"messages": [user("hi")], "n": 3})
    assert err.value.status == 400 and err.value.param == "n"


@pytest.mark.parametrize("response_format, expected", [
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, {"type": "object"}),
])
def test_response_format_becomes_format(response_format, expected):
    assert translate({"messages": [user("hi")], "response_format": response_format})["format"] == expected


def test_text_response_format_sets_no_format():
    assert "format" not in translate({"messages": [user("hi")], "response_format": {"type": "text"}})


def test_embeddings_request_targets_api_embed():
    out = translator().request(embeddings({"input": ["a", "b"]}), provider())
    assert out.path == "/api/embed"
    assert json.loads(out.body) == {"model": "llama3.2", "input": ["a", "b"]}


def test_embeddings_dimensions_are_sent_and_user_is_reported():
    out = translator().request(embeddings({"input": "a", "dimensions": 256, "user": "ada",
                                           "encoding_format": "base64"}), provider())
    assert json.loads(out.body) == {"model": "llama3.2", "input": "a", "dimensions": 256}
    assert out.dropped == ("user",)


def test_token_array_embeddings_input_cannot_be_expressed():
    with pytest.raises(GatewayError) as err:
        translator().request(embeddings({"input": [[1, 2, 3]]}), provider())
    assert err.value.status == 400 and err.value.param == "input"


# ----------------------------------------------------------------- response mapping


def respond(status: int, content_type: str, body: bytes, *, req: ClientRequest | None = None,
            pieces: list[bytes] | None = None) -> tuple[dict[str, str], bytes]:
    req = req or chat({"messages": [user("hi")]})
    stage = translator().response(req, provider())
    return run_stage(stage, status, content_type, pieces if pieces is not None else [body])


CHAT_RESPONSE = {
    "model": "llama3.2", "created_at": "2023-12-12T14:13:43.416799Z",
    "message": {"role": "assistant", "content": "Hello! How are you today?"},
    "done_reason": "stop", "done": True, "total_duration": 5191566416, "load_duration": 2154458,
    "prompt_eval_count": 26, "prompt_eval_duration": 383809000, "eval_count": 298,
    "eval_duration": 4799921000,
}


def test_json_response_becomes_chat_completion():
    headers, out = respond(200, "application/json; charset=utf-8", json.dumps(CHAT_RESPONSE).encode())
    assert headers == {"content-type": "application/json"}
    assert json.loads(out) == {
        "id": "chatcmpl-0123456789abcdef01234567", "object": "chat.completion", "created": NOW,
        "model": "llama3.2",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello! How are you today?"}}],
        "usage": {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324},
    }


@pytest.mark.parametrize("done_reason, finish", [("stop", "stop"), ("length", "length"), (None, "stop")])
def test_done_reason_maps_to_finish_reason(done_reason, finish):
    _, out = respond(200, "application/json", json.dumps({**CHAT_RESPONSE, "done_reason": done_reason}).encode())
    assert json.loads(out)["choices"][0]["finish_reason"] == finish


def test_json_tool_calls_get_ids_and_string_arguments():
    body = {**CHAT_RESPONSE, "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_current_weather", "arguments": {"format": "celsius", "location": "Paris, FR"}}},
        {"function": {"name": "get_time", "arguments": {}}}]}}
    _, out = respond(200, "application/json", json.dumps(body).encode())
    choice = json.loads(out)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_current_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"format": "celsius", "location": "Paris, FR"}
    assert calls[1]["function"]["arguments"] == "{}"
    assert all(c["type"] == "function" for c in calls)
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)


def test_json_body_is_emitted_only_at_end_of_stream():
    raw = json.dumps(CHAT_RESPONSE).encode()
    stage = translator().response(chat({"messages": [user("hi")]}), provider())
    stage.headers(200, "application/json")
    assert stage.body(raw[:10], False) == b""
    assert json.loads(stage.body(raw[10:], True))["usage"]["total_tokens"] == 324


EMBED_RESPONSE = {"model": "all-minilm", "embeddings": [[0.5, -0.25], [1.0, 0.0]],
                  "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 8}


def test_embeddings_response_becomes_openai_list_with_usage():
    _, out = respond(200, "application/json", json.dumps(EMBED_RESPONSE).encode(),
                     req=embeddings({"input": ["a", "b"]}))
    assert json.loads(out) == {
        "object": "list", "model": "llama3.2",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
                 {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}],
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


def test_embeddings_usage_claims_no_count_without_prompt_eval_count():
    body = {"model": "all-minilm", "embeddings": [[0.1]]}
    _, out = respond(200, "application/json", json.dumps(body).encode(), req=embeddings({"input": "a"}))
    assert json.loads(out)["usage"] == {}


@pytest.mark.parametrize("missing, usage", [
    ("prompt_eval_count", {"completion_tokens": 298}),
    ("eval_count", {"prompt_tokens": 26}),
])
def test_a_count_ollama_leaves_out_is_left_out_of_the_answer_not_claimed_as_zero(missing, usage):
    body = {k: v for k, v in CHAT_RESPONSE.items() if k != missing}
    stage = translator().response(chat({"messages": [user("hi")]}), provider())
    _, out = run_stage(stage, 200, "application/json", [json.dumps(body).encode()])
    assert json.loads(out)["usage"] == usage
    assert stage.usage == usage  # what the metrics count: the missing count is unknown


def test_base64_encoding_format_returns_packed_float32():
    _, out = respond(200, "application/json", json.dumps(EMBED_RESPONSE).encode(),
                     req=embeddings({"input": ["a", "b"], "encoding_format": "base64"}))
    first = json.loads(out)["data"][0]["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(first))) == [0.5, -0.25]


@pytest.mark.parametrize("status, message, openai_type, code", [
    (400, "invalid options", "invalid_request_error", None),
    (500, "llama runner process has terminated", "server_error", None),
])
def test_error_json_becomes_openai_error_json(status, message, openai_type, code):
    headers, out = respond(status, "application/json; charset=utf-8", json.dumps({"error": message}).encode())
    assert headers == {"content-type": "application/json"}
    assert json.loads(out) == {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


def test_a_404_for_the_model_is_a_502_that_names_the_model_the_gateway_sent():
    raw = b'{"error":"model \\"llama3.2\\" not found, try pulling it first"}'
    stage = translator().response(chat({"messages": [user("hi")]}), provider())
    _, out = run_stage(stage, 404, "application/json", [raw])
    assert stage.status_override == 502
    err = json.loads(out)["error"]
    assert (err["type"], err["code"]) == ("server_error", "provider_model_not_found")
    assert "'local'" in err["message"] and "'llama3.2'" in err["message"] and "try pulling it" in err["message"]


@pytest.mark.parametrize("handler", ["chat", "embeddings"])
def test_a_404_for_the_path_is_a_502_that_says_the_gateway_appends_api_itself(handler):
    # What Ollama answers /v1/api/chat: a base_url ending in /v1.
    req = embeddings({"input": "x"}) if handler == "embeddings" else chat({"messages": [user("hi")]})
    stage = translator().response(req, provider())
    _, out = run_stage(stage, 404, "text/plain; charset=utf-8", [b"404 page not found"])
    assert stage.status_override == 502
    err = json.loads(out)["error"]
    assert (err["type"], err["code"]) == ("server_error", "provider_path_not_found")
    assert "'local'" in err["message"] and "base_url" in err["message"] and "/api/chat" in err["message"]
    assert "not the client's" in err["message"]


def test_non_json_error_body_still_becomes_openai_error():
    _, out = respond(502, "text/plain", b"upstream connect error")
    err = json.loads(out)["error"]
    assert err["type"] == "server_error" and "upstream connect error" in err["message"]


@pytest.mark.parametrize("status, content_type, expected", [
    (200, "application/x-ndjson", "text/event-stream"),
    (200, "application/json; charset=utf-8", "application/json"),
    (404, "application/json", "application/json"),
])
def test_headers_set_only_content_type(status, content_type, expected):
    stage = translator().response(chat({"messages": [user("hi")]}, stream=True), provider())
    assert stage.headers(status, content_type) == {"content-type": expected}


# -------------------------------------------------------------------------- streams


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def line(content: str) -> dict[str, Any]:
    return {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00",
            "message": {"role": "assistant", "content": content}, "done": False}


FINAL = {"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z",
         "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
         "total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
         "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000}

TEXT_STREAM = ndjson(line("The"), line(" sky"), line(" is blue ✓ ünïcødé"), FINAL)
TOOL_STREAM = ndjson(
    {"model": "llama3.2", "created_at": "2024-07-22T20:33:28.123648Z", "done": False,
     "message": {"role": "assistant", "content": "", "tool_calls": [
         {"function": {"name": "get_current_weather", "arguments": {"location": "Paris, FR"}}}]}},
    {**FINAL, "eval_count": 33, "prompt_eval_count": 122})


def stream(raw: bytes, size: int | None = None, include_usage: bool = True) -> bytes:
    req = chat({"messages": [user("hi")], "stream_options": {"include_usage": include_usage}}, stream=True)
    _, out = respond(200, "application/x-ndjson", raw, req=req, pieces=pieces_of(raw, size))
    return out


def test_stream_carries_no_usage_chunk_unless_the_client_asked():
    got = sse_events(stream(TEXT_STREAM, include_usage=False))
    assert got[-1] == "[DONE]"
    assert all(chunk["choices"] for chunk in got[:-1])


def test_ndjson_stream_becomes_openai_chunks_usage_and_done():
    got = sse_events(stream(TEXT_STREAM))
    assert_one_stream(got[:-1], "chatcmpl-0123456789abcdef01234567", "llama3.2")
    assert [c["choices"][0]["delta"] for c in got[:5]] == [
        {"role": "assistant", "content": ""}, {"content": "The"}, {"content": " sky"},
        {"content": " is blue ✓ ünïcødé"}, {}]
    assert got[4]["choices"][0]["finish_reason"] == "stop"
    assert got[5]["choices"] == []
    assert got[5]["usage"] == {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}
    assert got[6] == "[DONE]" and len(got) == 7


def test_a_stream_whose_end_leaves_out_prompt_eval_count_claims_no_prompt_tokens():
    final = {k: v for k, v in FINAL.items() if k != "prompt_eval_count"}
    got = sse_events(stream(ndjson(line("The"), final)))
    assert got[-2]["usage"] == {"completion_tokens": 282}


def test_length_done_reason_in_stream():
    got = sse_events(stream(ndjson(line("a"), {**FINAL, "done_reason": "length"})))
    assert got[-3]["choices"][0]["finish_reason"] == "length"


def test_tool_call_stream_becomes_tool_call_delta_and_tool_calls_finish():
    got = sse_events(stream(TOOL_STREAM))
    call = got[1]["choices"][0]["delta"]["tool_calls"][0]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_current_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris, FR"}
    assert got[2]["choices"][0]["finish_reason"] == "tool_calls"
    assert got[3]["usage"]["total_tokens"] == 155


@pytest.mark.parametrize("transcript", [TEXT_STREAM, TOOL_STREAM], ids=["text", "tools"])
@pytest.mark.parametrize("size", [1, 2, 5, 13, 100, 10_000])
def test_stream_output_is_identical_however_the_input_is_split(transcript, size):
    assert stream(transcript, size) == stream(transcript)


def test_stream_lines_are_converted_as_they_arrive():
    stage = translator().response(chat({"messages": [user("hi")]}, stream=True), provider())
    stage.headers(200, "application/x-ndjson")
    first_line_end = TEXT_STREAM.index(b"\n") + 1
    assert stage.body(TEXT_STREAM[:first_line_end - 5], False) == b""  # half a line: wait
    got = sse_events(stage.body(TEXT_STREAM[first_line_end - 5:first_line_end], False))
    assert [c["choices"][0]["delta"] for c in got] == [{"role": "assistant", "content": ""}, {"content": "The"}]


def test_final_line_without_trailing_newline_is_still_read():
    got = sse_events(stream(TEXT_STREAM.rstrip(b"\n"), 3))
    assert got[-1] == "[DONE]"


def test_mid_stream_error_line_becomes_error_event_without_done():
    raw = ndjson(line("The"), {"error": "an error was encountered while running the model"}, FINAL)
    got = sse_events(stream(raw))
    assert got[-1] == {"error": {"message": "an error was encountered while running the model",
                                 "type": "server_error", "param": None, "code": None}}
    assert "[DONE]" not in got and not any(isinstance(c, dict) and "usage" in c for c in got)
    assert stream(raw, 1) == stream(raw)


def test_stream_cut_before_done_ends_with_an_error_event():
    raw = ndjson(line("The"), line(" sky"))
    got = sse_events(stream(raw, 4))
    assert [c["choices"][0]["delta"] for c in got[:-1]] == [
        {"role": "assistant", "content": ""}, {"content": "The"}, {"content": " sky"}]
    assert got[-1]["error"]["message"] == "provider stream ended unexpectedly"
    assert got[-1]["error"]["type"] == "server_error"


def test_stream_request_answered_with_error_status_is_json_error():
    raw = b'{"error":"model \\"nope\\" not found, try pulling it first"}'
    headers, out = respond(404, "application/json", raw, req=chat({"messages": [user("hi")]}, stream=True),
                           pieces=[raw[:7], raw[7:]])
    assert headers == {"content-type": "application/json"}
    assert json.loads(out)["error"]["code"] == "provider_model_not_found"


# ------------------------------------------------------------------ property test


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests(WEATHER_TOOL), st.booleans())
def test_any_valid_chat_request_translates_and_keeps_its_text(body, stream_flag):
    sent = json.loads(translator().request(chat(body, stream=stream_flag), provider()).body)
    assert sent["stream"] is stream_flag
    assert len(sent["messages"]) == len(body["messages"])
    for original, translated in zip(body["messages"], sent["messages"], strict=True):
        content = original.get("content")
        texts = [content] if isinstance(content, str) else [p["text"] for p in content or []]
        assert isinstance(translated["content"], str)
        for text in texts:
            assert text in translated["content"]


# ------------------------------------------------------------------- thinking


@pytest.mark.parametrize("effort, think", [("none", False), ("minimal", "low"), ("low", "low"),
                                           ("medium", "medium"), ("high", "high"), ("xhigh", "high")])
def test_reasoning_effort_becomes_think(effort, think):
    # Ollama takes a level for models that have levels (gpt-oss) and reads any level
    # as "think" on the others; false turns thinking off where the model allows it.
    assert translate({"messages": [user("hi")], "reasoning_effort": effort})["think"] == think


def test_no_reasoning_effort_leaves_think_to_the_model():
    assert "think" not in translate({"messages": [user("hi")]})


def test_message_thinking_becomes_reasoning_content():
    answer = {**CHAT_RESPONSE, "message": {"role": "assistant", "content": "4", "thinking": "2 and 2 make 4."}}
    _, out = respond(200, "application/json", json.dumps(answer).encode())
    assert json.loads(out)["choices"][0]["message"] == {
        "role": "assistant", "content": "4", "reasoning_content": "2 and 2 make 4."}


def thinking_line(thinking: str) -> dict[str, Any]:
    return {**line(""), "message": {"role": "assistant", "content": "", "thinking": thinking}}


def test_streamed_thinking_becomes_reasoning_content_deltas():
    got = sse_events(stream(ndjson(thinking_line("2 and 2"), thinking_line(" make 4."), line("4"), FINAL)))
    deltas = [c["choices"][0]["delta"] for c in got if c != "[DONE]" and c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"reasoning_content": "2 and 2"},
                      {"reasoning_content": " make 4."}, {"content": "4"}, {}]
