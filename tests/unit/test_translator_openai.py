"""The OpenAI stream stage: events pass through, and the way a stream ends is known."""

from __future__ import annotations

import json

import pytest

from ext_proc.client_request import ClientRequest
from ext_proc.outcomes import StreamOutcome
from ext_proc.translators.openai import OpenAIResponseStage, OpenAITranslator
from tests.translator_helpers import (
    client_request,
    make_provider,
    pieces_of,
    run_stage,
    sse_events,
    user,
)


def chunk(content: str | None, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    event = {"id": "c1", "object": "chat.completion.chunk", "choices": choices, "usage": usage}
    return f"data: {json.dumps(event)}\n\n".encode()


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
WHOLE = chunk("Hel") + chunk("lo", "stop") + chunk(None, usage=USAGE) + b"data: [DONE]\n\n"


def provider():
    return make_provider("openai", "oai", "gpt-4o", "https://api.openai.com", api_key="k", base_path="/v1")


@pytest.mark.parametrize("size", [None, 1, 7])
def test_a_whole_stream_passes_through_and_completes(size):
    stage = OpenAIResponseStage(provider(), include_usage=True)
    _, out = run_stage(stage, 200, "text/event-stream; charset=utf-8", pieces_of(WHOLE, size))
    assert sse_events(out) == sse_events(WHOLE)
    assert stage.stream_outcome == StreamOutcome.COMPLETED
    assert stage.usage == USAGE


def test_the_usage_chunk_the_gateway_asked_for_is_dropped_for_a_client_that_did_not():
    stage = OpenAIResponseStage(provider(), include_usage=False)
    _, out = run_stage(stage, 200, "text/event-stream", [WHOLE])
    events = sse_events(out)
    assert events[-1] == "[DONE]" and all(e["choices"] for e in events[:-1])
    assert stage.usage == USAGE  # still seen by the gateway, for its token counts


def test_a_stream_that_ends_without_done_gets_an_error_event():
    stage = OpenAIResponseStage(provider(), include_usage=False)
    _, out = run_stage(stage, 200, "text/event-stream", [chunk("Hel"), b""])
    events = sse_events(out)
    assert events[0]["choices"][0]["delta"] == {"content": "Hel"}
    assert events[-1]["error"]["message"] == "provider stream ended unexpectedly"
    assert stage.stream_outcome == StreamOutcome.ENDED_EARLY


def test_a_provider_error_event_ends_the_stream_as_a_provider_error():
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    stage = OpenAIResponseStage(provider(), include_usage=False)
    _, out = run_stage(stage, 200, "text/event-stream", [chunk("Hel") + error + chunk("ignored"), b""])
    events = sse_events(out)
    assert events[-1]["error"]["message"] == "overloaded" and len(events) == 2  # nothing after the error
    assert stage.stream_outcome == StreamOutcome.PROVIDER_ERROR


@pytest.mark.parametrize("status,content_type", [(429, "application/json"), (500, "text/event-stream")])
def test_errors_are_not_read(status, content_type):
    stage = OpenAIResponseStage(provider(), include_usage=False)
    stage.headers(status, content_type)
    assert not stage.reads_body and not stage.streams


INVALID_URL = (b'{"error":{"message":"Invalid URL (POST /chat/completions)","type":"invalid_request_error",'
               b'"param":null,"code":null}}')  # api.openai.com, for a base_url without /v1
UNKNOWN_MODEL = (b'{"error":{"message":"The model `gpt-4o` does not exist or you do not have access to it.",'
                 b'"type":"invalid_request_error","param":null,"code":"model_not_found"}}')


@pytest.mark.parametrize("body, content_type", [
    (INVALID_URL, "application/json"),
    (b'{"detail":"Not Found"}', "application/json"),  # an OpenAI-compatible server on FastAPI
    (b"<html><body>404 Not Found</body></html>", "text/html"),  # a proxy in front of it
])
def test_a_404_for_the_path_is_a_502_that_blames_the_providers_base_url_not_the_client(body, content_type):
    stage = OpenAIResponseStage(provider(), include_usage=False)
    stage.headers(404, content_type)
    assert stage.reads_body and not stage.streams and not stage.reads_json_only_for_usage
    _, out = run_stage(stage, 404, content_type, [body[:9], body[9:]])
    assert stage.status_override == 502
    err = json.loads(out)["error"]
    assert (err["type"], err["code"]) == ("server_error", "provider_path_not_found")
    assert "'oai'" in err["message"] and "base_url" in err["message"] and "/v1" in err["message"]
    assert "not the client's" in err["message"]


def test_a_404_for_the_model_is_a_502_that_names_the_model_the_gateway_sent():
    stage = OpenAIResponseStage(provider(), include_usage=False)
    _, out = run_stage(stage, 404, "application/json", [UNKNOWN_MODEL])
    assert stage.status_override == 502
    err = json.loads(out)["error"]
    assert err["code"] == "provider_model_not_found"
    assert "'oai'" in err["message"] and "'gpt-4o'" in err["message"] and "does not exist" in err["message"]
    assert "base_url" not in err["message"] and "not the client's" in err["message"]


def test_a_json_answer_passes_unchanged_and_its_usage_is_read():
    answer = json.dumps({"id": "c1", "object": "chat.completion", "choices": [], "usage": USAGE}).encode()
    stage = OpenAITranslator().response(client_request("gpt-4o", {"messages": [user("hi")]}), provider())
    headers, out = run_stage(stage, 200, "application/json", pieces_of(answer, 5))
    assert (headers, out) == ({}, answer)
    assert stage.reads_body and not stage.streams
    assert stage.usage == USAGE


@pytest.mark.parametrize(("handler", "model", "stream", "include_usage"), [
    ("chat", "gpt-4o", True, True),     # a stream that asked for the usage chunk itself
    ("chat", "gpt-4o", False, False),
    ("embeddings", "gpt-4o", False, False),
])
def test_a_body_that_names_the_providers_model_and_asks_what_the_gateway_needs_goes_as_sent(
        handler, model, stream, include_usage):
    out = OpenAITranslator().request_as_sent(ClientRequest.as_read(handler, model, stream, include_usage), provider())
    assert out is not None and out.body is None
    assert out.path == {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings"}[handler]
    assert out.set_headers == {"authorization": "Bearer k"}


@pytest.mark.parametrize(("handler", "model", "stream", "include_usage"), [
    ("chat", "mini", True, True),       # an alias: the body must name the provider's model
    ("chat", "gpt-4o", True, False),    # the gateway adds include_usage to count the stream's tokens
    ("completion", "gpt-4o", False, False),  # a legacy completion becomes a chat request
])
def test_a_body_the_gateway_must_rewrite_does_not_go_as_sent(handler, model, stream, include_usage):
    assert OpenAITranslator().request_as_sent(ClientRequest.as_read(handler, model, stream, include_usage),
                                              provider()) is None
