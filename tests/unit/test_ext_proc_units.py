"""ext_proc's pure parts: request parsing, SSE reassembly, response shapes, runtime view."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_pb
from google.protobuf import struct_pb2, text_format
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ext_proc import client_request
from ext_proc.errors import GatewayError
from ext_proc.inbound.completions import TextCompletionStage
from ext_proc.metrics import GatewayMetrics
from ext_proc.provider_health import ProviderProber
from ext_proc.runtime import Chain, InvalidRuntime, RuntimeView
from ext_proc.sse import SseParser, encode
from ext_proc.steps.messages import hapax_metadata
from ext_proc.steps.upstream import UpstreamStep
from hapax.v1 import runtime_pb2
from hapax.wire import (
    DROPPED_PARAMS_HEADER,
    EXT_PROC_ATTRIBUTES,
    REQUEST_METADATA_ATTRIBUTE,
    VERSION_HEADER,
)
from hapax.wire import HOST_METADATA_ATTRIBUTE as HOST_METADATA
from hapax.wire import ROUTE_METADATA_ATTRIBUTE as ROUTE_METADATA

# ---------------------------------------------------------------- client requests


def test_chat_body_is_kept_as_sent():
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    req = client_request.parse("chat", raw)
    assert (req.handler, req.model, req.stream) == ("chat", "m", True)


@pytest.mark.parametrize("body", [{"prompt": "p"}, {"prompt": ["p"]}, {"input": "p"},
                                  {"messages": [{"role": "user", "content": "p"}]}])
def test_completion_shapes_become_one_chat_request(body):
    req = client_request.parse("completion", json.dumps({**body, "max_tokens": 5}).encode())
    assert req.body["messages"] == [{"role": "user", "content": "p"}]
    assert req.body["max_tokens"] == 5
    assert "prompt" not in req.body and "input" not in req.body


@pytest.mark.parametrize("raw,param", [
    (b"", None), (b"[1, 2]", None), (b"\xff\xfe", None),
    (b'{"prompt": ["a", "b"]}', "prompt"), (b'{"prompt": 3}', "prompt"), (b"{}", "prompt"),
])
def test_bad_completion_bodies_are_400s(raw, param):
    with pytest.raises(GatewayError) as err:
        client_request.parse("completion", raw)
    assert err.value.status == 400 and err.value.param == param


@pytest.mark.parametrize("field, value", [
    ("suffix", "}\n"), ("echo", True), ("best_of", 3), ("logprobs", 0), ("logprobs", 5)])
def test_legacy_fields_a_chat_cannot_express_are_400s_naming_them(field, value):
    # Every provider is sent a legacy completion as a chat: none of them could honour these.
    with pytest.raises(GatewayError) as err:
        client_request.parse("completion", json.dumps({"prompt": "p", field: value}).encode())
    assert err.value.status == 400 and err.value.param == field


def test_legacy_fields_at_their_defaults_pass_and_leave_the_chat():
    body = {"prompt": "p", "suffix": None, "echo": False, "best_of": 1, "logprobs": None, "seed": 3}
    req = client_request.parse("completion", json.dumps(body).encode())
    assert req.body == {"messages": [{"role": "user", "content": "p"}], "seed": 3}


@pytest.mark.parametrize("field, value", [
    ("encoding_format", "int8"), ("dimensions", 0), ("dimensions", "256"), ("dimensions", True)])
def test_embeddings_options_openai_rejects_are_400s(field, value):
    with pytest.raises(GatewayError) as err:
        client_request.parse("embeddings", json.dumps({"input": "x", field: value}).encode())
    assert err.value.status == 400 and err.value.param == field


@pytest.mark.parametrize("options", ['"yes"', "[true]", "1"])
def test_stream_options_that_are_not_an_object_are_400s(options):
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": %s}' % options.encode()
    with pytest.raises(GatewayError) as err:
        client_request.parse("chat", raw)
    assert err.value.status == 400 and err.value.param == "stream_options"


@pytest.mark.parametrize("value", ["x", ["a", "b"], [[1, 2], [3]], [1, 2]])
def test_embedding_inputs_openai_accepts_are_accepted(value):
    assert client_request.parse("embeddings", json.dumps({"input": value}).encode()).handler == "embeddings"


@pytest.mark.parametrize("value", [None, 3, [], [{"a": 1}], [True]])
def test_embedding_inputs_openai_rejects_are_400s(value):
    body = {} if value is None else {"input": value}
    with pytest.raises(GatewayError) as err:
        client_request.parse("embeddings", json.dumps(body).encode())
    assert err.value.param == "input"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=12),
       st.sampled_from(["chat", "completion", "embeddings"]))
def test_any_json_is_either_accepted_or_a_gateway_error(value, handler):
    try:
        client_request.parse(handler, json.dumps(value).encode())
    except GatewayError as err:
        assert 400 <= err.status < 500
        assert json.loads(err.body())["error"]["message"]


# ---------------------------------------------------------------- SSE


def test_sse_events_split_across_reads_are_reassembled():
    stream = encode('{"a": 1}') + b"event: ping\ndata: {}\r\n\r\n" + encode("[DONE]")
    whole = SseParser().feed(stream)
    parser = SseParser()
    pieces = [e for i in range(len(stream)) for e in parser.feed(stream[i:i + 1])]
    assert pieces == whole
    assert [(e.event, e.data) for e in whole] == [("message", '{"a": 1}'), ("ping", "{}"), ("message", "[DONE]")]


def test_sse_tail_without_blank_line_is_delivered_on_finish():
    parser = SseParser()
    assert parser.feed(b"data: last") == []
    assert [e.data for e in parser.finish()] == ["last"]


# ---------------------------------------------------------------- text_completion shape


def _chat_chunk(text: str | None, finish: str | None = None, chat_id: str = "c1") -> bytes:
    chunk = {"id": chat_id, "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}
    return encode(json.dumps(chunk))


def test_chat_json_becomes_text_completion():
    stage = TextCompletionStage()
    stage.headers(200, "application/json")
    body = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    raw = json.dumps(body).encode()
    assert stage.body(raw[:10], False) == b""
    out = json.loads(stage.body(raw[10:], True))
    assert out["object"] == "text_completion"
    assert out["choices"] == [{"text": "hello", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert out["usage"]["total_tokens"] == 2


def test_chat_stream_becomes_text_completion_chunks_as_they_arrive():
    stage = TextCompletionStage()
    stage.headers(200, "text/event-stream")
    first = stage.body(_chat_chunk("Hel"), False)
    assert json.loads(first.decode().removeprefix("data: "))["choices"][0]["text"] == "Hel"
    rest = stage.body(_chat_chunk("lo", "stop") + encode("[DONE]"), True).decode()
    events = [line.removeprefix("data: ") for line in rest.split("\n") if line]
    assert json.loads(events[0])["choices"][0] == {"text": "lo", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert events[1] == "[DONE]"


def test_a_text_completion_has_a_cmpl_id_not_the_chats_chatcmpl_id():
    stage = TextCompletionStage()
    stage.headers(200, "application/json")
    body = {"id": "chatcmpl-abc123", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    assert json.loads(stage.body(json.dumps(body).encode(), True))["id"] == "cmpl-abc123"


def test_every_text_completion_chunk_has_the_same_cmpl_id():
    stage = TextCompletionStage()
    stage.headers(200, "text/event-stream")
    chunks = b"".join(_chat_chunk(text, None, "chatcmpl-xyz") for text in ("a", "b"))
    events = [line.removeprefix("data: ") for line in stage.body(chunks, True).decode().split("\n") if line]
    assert [json.loads(e)["id"] for e in events] == ["cmpl-xyz", "cmpl-xyz"]


@pytest.mark.parametrize("chat_id, text_id", [("c1", "cmpl-c1"), ("cmpl-c1", "cmpl-c1"), ("", "cmpl-")])
def test_a_chat_id_without_the_chatcmpl_prefix_still_gets_cmpl(chat_id, text_id):
    stage = TextCompletionStage()
    stage.headers(200, "application/json")
    body = {"id": chat_id, "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    assert json.loads(stage.body(json.dumps(body).encode(), True))["id"] == text_id


def test_provider_errors_pass_through_the_completion_shape_untouched():
    stage = TextCompletionStage()
    stage.headers(429, "application/json")
    error = b'{"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limit_exceeded"}}'
    assert stage.body(error, True) == error


# ---------------------------------------------------------------- runtime view


def _runtime() -> runtime_pb2.Runtime:
    rt = runtime_pb2.Runtime(config_version="7")
    rt.providers.add(name="a", type="openai", model="shared", base_url="https://api.example.com/v1",
                     cluster="provider.a")
    rt.providers.add(name="b", type="openai", model="shared", aliases=["b-alias"],
                     base_url="http://10.0.0.1:8000", cluster="provider.b")
    rt.chains.add(cluster="chain.a", providers=["a", "b"], attempts=2)
    rt.chains.add(cluster="chain.b", providers=["b", "a"], attempts=3)
    rt.models.add(name="shared", provider="a", chain="chain.a")
    rt.models.add(name="b-alias", provider="b", chain="chain.b")
    return rt


def test_runtime_view_reads_the_plans_chains_as_sent_and_hosts_with_ports():
    view = RuntimeView.from_proto(_runtime(), frozenset({"openai"}))
    assert view.chain_for_model == {"shared": Chain("chain.a", 2), "b-alias": Chain("chain.b", 3)}
    assert view.default_chain == Chain("chain.a", 2)
    assert view.providers["a"].host == "api.example.com" and view.providers["a"].base_path == "/v1"
    assert view.providers["b"].host == "10.0.0.1:8000" and view.providers["b"].base_path == ""


def test_a_runtime_whose_model_names_a_missing_chain_is_rejected():
    rt = _runtime()
    rt.models.add(name="orphan", provider="c", chain="chain.c")
    with pytest.raises(InvalidRuntime, match="orphan"):
        RuntimeView.from_proto(rt, frozenset({"openai"}))


def test_ipv6_provider_hosts_keep_their_brackets():
    rt = _runtime()
    rt.providers[1].base_url = "http://[::1]:11434"
    rt.providers[0].base_url = "https://[2001:db8::1]/v1"
    view = RuntimeView.from_proto(rt, frozenset({"openai"}))
    assert view.providers["b"].host == "[::1]:11434"
    assert view.providers["a"].host == "[2001:db8::1]"


def test_runtime_with_a_provider_type_without_translator_is_rejected():
    with pytest.raises(InvalidRuntime, match="no translator"):
        RuntimeView.from_proto(_runtime(), frozenset({"anthropic"}))


def test_provider_name_is_read_from_envoy_host_metadata_text():
    text = 'filter_metadata { key: "hapax" value { fields { key: "provider" value { string_value: "b" } } } }'
    assert hapax_metadata(text).get("provider", "") == "b"
    assert hapax_metadata("").get("provider", "") == ""


def test_every_attempt_uses_the_version_its_request_started_under():
    started_under = RuntimeView.from_proto(_runtime(), frozenset({"openai"}))
    newer = _runtime()
    newer.config_version = "v2"
    del newer.providers[1]  # provider b removed while a request to it was in flight
    newer.chains.pop()
    newer.chains[0].providers[:] = ["a"]
    del newer.models[1]
    current = RuntimeView.from_proto(newer, frozenset({"openai"}))
    attributes = {EXT_PROC_ATTRIBUTES: struct_pb2.Struct(fields={
        HOST_METADATA: struct_pb2.Value(string_value='filter_metadata { key: "hapax" value { fields { key: '
                                                     '"provider" value { string_value: "b" } } } }'),
        ROUTE_METADATA: struct_pb2.Value(string_value='filter_metadata { key: "hapax" value { fields { key: '
                                                      '"handler" value { string_value: "chat" } } } }')})}
    headers = ext_pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=VERSION_HEADER, raw_value=started_under.version.encode())]))
    step = UpstreamStep(current, view_for={started_under.version: started_under}.get)
    step.request_headers(headers, attributes)
    assert step.attempt is not None and step.attempt.provider.name == "b"
    with pytest.raises(GatewayError, match="unknown provider"):  # without the pin, b is gone
        UpstreamStep(current).request_headers(ext_pb.HttpHeaders(), attributes)


def body_metadata(**read: str | bool) -> str:
    """The request's dynamic metadata attribute as Envoy sends it (text format): what json_to_metadata read."""
    md = base_pb2.Metadata()
    md.filter_metadata["hapax.request"].update(read)
    return text_format.MessageToString(md)


def _as_sent_stream_step() -> tuple[UpstreamStep, ext_pb.ProcessingResponse]:
    """Provider a's own model, streamed, the usage chunk asked for: the body goes as the client sent it."""
    route_md = base_pb2.Metadata()
    route_md.filter_metadata["hapax"].update({"handler": "chat", "lane": "model"})
    host_md = base_pb2.Metadata()
    host_md.filter_metadata["hapax"].update({"provider": "a"})
    attributes = {EXT_PROC_ATTRIBUTES: struct_pb2.Struct(fields={
        HOST_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(host_md)),
        ROUTE_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(route_md))})}
    attributes[EXT_PROC_ATTRIBUTES].fields[REQUEST_METADATA_ATTRIBUTE].string_value = body_metadata(
        model="shared", stream=True, include_usage=True)
    headers = ext_pb.HttpHeaders()
    step = UpstreamStep(RuntimeView.from_proto(_runtime(), frozenset({"openai"})))
    return step, step.request_headers(headers, attributes)


def _status(code: int) -> dict:
    return {EXT_PROC_ATTRIBUTES: struct_pb2.Struct(fields={"response.code": struct_pb2.Value(number_value=code)})}


def test_a_stream_sent_as_it_is_skips_its_body_and_its_answers_headers():
    _, response = _as_sent_stream_step()
    mode = response.mode_override
    assert mode.request_body_mode == mode.NONE and mode.response_header_mode == mode.SKIP
    assert mode.response_body_mode == mode.STREAMED
    mutation = response.request_headers.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value for h in mutation.set_headers}
    assert set_headers[":path"] == b"/v1/chat/completions" and set_headers[":authority"] == b"api.example.com"


def test_a_stream_sent_as_it_is_is_read_as_a_stream_once_its_first_bytes_show_it_is_one():
    step, _ = _as_sent_stream_step()
    step.response_body(ext_pb.HttpBody(body=b""), _status(200))  # the status, no bytes yet
    assert not step.streaming
    event = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    response = step.response_body(ext_pb.HttpBody(body=event), None)
    assert step.streaming
    assert not response.response_body.response.HasField("body_mutation")  # unchanged: Envoy keeps its copy
    step.response_body(ext_pb.HttpBody(body=b"data: [DONE]\n\n", end_of_stream=True), None)
    assert step.stage is not None and step.stage.stream_outcome == "completed" and step.done


def test_an_answer_to_a_stream_sent_as_it_is_that_is_not_a_stream_passes_as_it_is():
    step, _ = _as_sent_stream_step()
    error = b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}'
    response = step.response_body(ext_pb.HttpBody(body=error, end_of_stream=True), _status(400))
    assert not step.streaming and step.stage is None and step.done
    assert response.response_body.response == ext_pb.CommonResponse()


# ---------------------------------------------------------------- dropped fields reach the client


def _anthropic_step(lane: str) -> UpstreamStep:
    """An attempt to an Anthropic provider, on the ordinary route ("") or the model lane, its headers read."""
    rt = _runtime()
    rt.providers.add(name="claude", type="anthropic", model="claude-3-haiku", base_url="https://api.anthropic.com",
                     cluster="provider.claude")
    route_md = base_pb2.Metadata()
    route_md.filter_metadata["hapax"].update({"handler": "chat", **({"lane": lane} if lane else {})})
    host_md = base_pb2.Metadata()
    host_md.filter_metadata["hapax"].update({"provider": "claude"})
    attributes = {EXT_PROC_ATTRIBUTES: struct_pb2.Struct(fields={
        HOST_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(host_md)),
        ROUTE_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(route_md))})}
    step = UpstreamStep(RuntimeView.from_proto(rt, frozenset({"openai", "anthropic"})))
    if lane:
        attributes[EXT_PROC_ATTRIBUTES].fields[REQUEST_METADATA_ATTRIBUTE].string_value = body_metadata(
            model="claude-3-haiku", stream=False)
    step.request_headers(ext_pb.HttpHeaders(), attributes)
    return step


def _answer_headers(step: UpstreamStep, content_type: str) -> dict[str, bytes]:
    headers = ext_pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=":status", raw_value=b"200"),
        base_pb2.HeaderValue(key="content-type", raw_value=content_type.encode())]))
    mutation = step.response_headers(headers, None).response_headers.response.header_mutation
    return {h.header.key: h.header.raw_value for h in mutation.set_headers}


@pytest.mark.parametrize("lane", ["", "model"], ids=["router", "model-lane"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_fields_a_provider_was_not_sent_are_named_on_the_answer(lane, stream):
    step = _anthropic_step(lane)
    body = {"model": "claude-3-haiku", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "seed": 7, "frequency_penalty": 0.5}
    step.request_body(ext_pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True), None)
    sent = _answer_headers(step, "text/event-stream" if stream else "application/json")
    assert sent[DROPPED_PARAMS_HEADER] == b"frequency_penalty, seed"


def test_an_answer_whose_provider_was_sent_every_field_names_none():
    step = _anthropic_step("")
    body = {"model": "claude-3-haiku", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
    step.request_body(ext_pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True), None)
    assert DROPPED_PARAMS_HEADER not in _answer_headers(step, "application/json")


# ---------------------------------------------------------------- token usage an attempt counts


def _metered_step(provider_type: str, route_md: dict[str, str]) -> tuple[UpstreamStep, GatewayMetrics]:
    """A step on the ordinary route for a provider of ``provider_type`` that counts into its own metrics."""
    rt = runtime_pb2.Runtime(config_version="7")
    rt.providers.add(name="p", type=provider_type, model="llama3.2", base_url="http://localhost:11434",
                     cluster="provider.p")
    rt.chains.add(cluster="chain.p", providers=["p"], attempts=2)
    rt.models.add(name="llama3.2", provider="p", chain="chain.p")
    rt.routes.add(path="/v1/chat/completions", handler="chat", version="v1")
    view = RuntimeView.from_proto(rt, frozenset({provider_type}))
    metrics = GatewayMetrics(ProviderProber(lambda _: None))
    metrics.configure(view)
    md, host = base_pb2.Metadata(), base_pb2.Metadata()
    md.filter_metadata["hapax"].update({"route": "/v1/chat/completions", **route_md})
    host.filter_metadata["hapax"].update({"provider": "p"})
    attributes = {EXT_PROC_ATTRIBUTES: struct_pb2.Struct(fields={
        HOST_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(host)),
        ROUTE_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(md))})}
    step = UpstreamStep(view, metrics)
    step.request_headers(ext_pb.HttpHeaders(), attributes)
    return step, metrics


def _answer(step: UpstreamStep, request: dict, status: int, content_type: str, body: bytes) -> None:
    step.request_body(ext_pb.HttpBody(body=json.dumps(request).encode(), end_of_stream=True), {})
    step.response_headers(ext_pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=":status", raw_value=str(status).encode()),
        base_pb2.HeaderValue(key="content-type", raw_value=content_type.encode())])), {})
    step.response_body(ext_pb.HttpBody(body=body, end_of_stream=True), {})
    step.finish()


def _series(metrics: GatewayMetrics, name: str, kind: str) -> float | None:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("gen_ai_token_type") == kind:
                return sample.value
    return None


CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
OLLAMA_ANSWER = {"model": "llama3.2", "message": {"role": "assistant", "content": "Hello"}, "done": True,
                 "done_reason": "stop", "eval_count": 2}  # no prompt_eval_count: a cached prompt


def test_an_attempt_counts_a_token_count_its_answer_lacks_as_unknown_not_zero():
    step, metrics = _metered_step("ollama", {"handler": "chat"})
    _answer(step, CHAT, 200, "application/json", json.dumps(OLLAMA_ANSWER).encode())
    assert _series(metrics, "hapax_usage_unknown_total", "input") == 1.0
    assert _series(metrics, "gen_ai_client_token_usage_count", "input") is None
    assert _series(metrics, "gen_ai_client_token_usage_sum", "output") == 2.0


def test_a_stream_whose_end_lacks_a_count_has_it_counted_as_unknown():
    step, metrics = _metered_step("ollama", {"handler": "chat"})
    ndjson = json.dumps({**OLLAMA_ANSWER, "message": {"role": "assistant", "content": ""}}).encode() + b"\n"
    _answer(step, {**CHAT, "stream": True}, 200, "application/x-ndjson", ndjson)
    assert _series(metrics, "hapax_usage_unknown_total", "input") == 1.0
    assert _series(metrics, "gen_ai_client_token_usage_count", "input") is None


def _stream_without_its_end(step: UpstreamStep, ndjson: bytes) -> None:
    """Every event of a stream reaches the step, but not Envoy's (empty) end-of-stream message."""
    step.request_body(ext_pb.HttpBody(body=json.dumps({**CHAT, "stream": True}).encode(), end_of_stream=True), {})
    step.response_headers(ext_pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=":status", raw_value=b"200"),
        base_pb2.HeaderValue(key="content-type", raw_value=b"application/x-ndjson")])), {})
    step.response_body(ext_pb.HttpBody(body=ndjson, end_of_stream=False), {})


def test_a_stream_whose_call_ends_before_its_end_of_stream_message_still_counts_its_tokens():
    # The client read the last event and left; Envoy reset the call before the empty end.
    step, metrics = _metered_step("ollama", {"handler": "chat"})
    _stream_without_its_end(step, json.dumps({**OLLAMA_ANSWER, "prompt_eval_count": 3}).encode() + b"\n")
    step.finish()
    assert _series(metrics, "gen_ai_client_token_usage_sum", "input") == 3.0
    assert _series(metrics, "gen_ai_client_token_usage_sum", "output") == 2.0
    step.finish()  # counted once, however often the end is seen
    assert _series(metrics, "gen_ai_client_token_usage_sum", "output") == 2.0


def test_a_stream_cut_before_its_last_event_counts_no_tokens():
    step, metrics = _metered_step("ollama", {"handler": "chat"})
    unfinished = {"model": "llama3.2", "message": {"role": "assistant", "content": "Hel"}, "done": False}
    _stream_without_its_end(step, json.dumps(unfinished).encode() + b"\n")
    step.finish()
    assert _series(metrics, "gen_ai_client_token_usage_sum", "output") is None


@pytest.mark.parametrize("status, body", [(500, b'{"error":"llama runner process has terminated"}'),
                                          (200, b"not json")])
def test_an_answer_that_is_not_one_has_no_token_count_to_miss(status, body):
    step, metrics = _metered_step("ollama", {"handler": "chat"})
    _answer(step, CHAT, status, "application/json", body)
    assert _series(metrics, "hapax_usage_unknown_total", "input") is None


def test_an_answer_without_usage_has_its_token_counts_counted_as_unknown():
    step, metrics = _metered_step("openai", {"handler": "chat"})
    answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "llama3.2",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    _answer(step, CHAT, 200, "application/json", json.dumps(answer).encode())
    assert _series(metrics, "hapax_usage_unknown_total", "input") == 1.0
    assert _series(metrics, "hapax_usage_unknown_total", "output") == 1.0


def test_public_health_says_where_an_edit_was_refused_and_the_admin_side_why():
    from ext_proc.health_app import _config_status

    status = runtime_pb2.ConfigStatus(reloads_invalid=1, last_error="hapax.yaml: providers.a.timeout: got 'x'",
                                      last_error_source="hapax.yaml", last_error_paths=["providers.a.timeout"])
    status.rejections.add(node="envoy", type_url="t", version="v", reason="Envoy's own words")
    public = _config_status(status, detailed=False)
    assert public["last_refused_edit"] == {"file": "hapax.yaml", "at": ["providers.a.timeout"]}
    assert "last_error" not in public and "reason" not in public["rejected_versions"][0]
    admin = _config_status(status, detailed=True)
    assert admin["last_error"] == status.last_error and admin["rejected_versions"][0]["reason"]


def test_health_says_which_version_went_out_without_envoys_validation():
    from ext_proc.health_app import _config_status

    assert "unchecked_version" not in _config_status(runtime_pb2.ConfigStatus(serving_version="7-ab"), detailed=False)
    status = runtime_pb2.ConfigStatus(serving_version="7-ab", unchecked_version="7-ab")
    assert _config_status(status, detailed=False)["unchecked_version"] == "7-ab"
    assert _config_status(status, detailed=True)["unchecked_version"] == "7-ab"
