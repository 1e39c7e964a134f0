"""Providers that misbehave on the wire: the client gets a clean error, never a hang.

A small stub speaks just enough Anthropic SSE and Ollama NDJSON to break them
in the ways real providers and proxies do: a 200 whose body is not JSON, a
stream that ends before its last event, bytes that are not UTF-8, a line that
is not JSON. What the user typed selects the misbehaviour.
"""

from __future__ import annotations

import json

import openai
import pytest
from aiohttp import web

from tests.conftest import gateway_config


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


MESSAGE_START = _sse("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "broken-claude", "content": [],
    "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 0}}})
BLOCK_START = _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})


def _text_delta(text: str) -> bytes:
    return _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": text}})


async def _stream(request: web.Request, pieces: list[bytes], content_type: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": content_type})
    await response.prepare(request)
    for piece in pieces:
        await response.write(piece)
    await response.write_eof()
    return response


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    said = body["messages"][-1]["content"]
    said = said if isinstance(said, str) else said[0]["text"]
    if said == "garbage":
        return web.Response(status=200, body=b"this is not json", content_type="application/json")
    if said == "truncated":
        return await _stream(request, [MESSAGE_START, BLOCK_START, _text_delta("half an ans")], "text/event-stream")
    if said == "bad utf-8":
        broken = _text_delta("caf").replace(b'"caf"', b'"caf\xff\xfe"')
        tail = [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": 1}}),
                _sse("message_stop", {"type": "message_stop"})]
        return await _stream(request, [MESSAGE_START, BLOCK_START, broken, *tail], "text/event-stream")
    raise web.HTTPBadRequest(text="unknown misbehaviour")


async def ollama_chat(request: web.Request) -> web.StreamResponse:
    said = (await request.json())["messages"][-1]["content"]
    line = json.dumps({"model": "broken-llama", "message": {"role": "assistant", "content": "par"},
                       "done": False}).encode() + b"\n"
    if said == "garbage line":
        return await _stream(request, [line, b"<html>proxy error</html>\n"], "application/x-ndjson")
    if said == "truncated":
        return await _stream(request, [line, line], "application/x-ndjson")
    if said == "fine":
        done = json.dumps({"model": "broken-llama", "message": {"role": "assistant", "content": "t"},
                           "done": True, "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 2}).encode()
        return await _stream(request, [line, done + b"\n"], "application/x-ndjson")
    raise web.HTTPBadRequest(text="unknown misbehaviour")


@pytest.fixture(scope="module")
def stub(fake_host):
    app = web.Application()
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_post("/api/chat", ollama_chat)
    # Healthy as far as the health checks can tell: the breakage is in the answers.
    app.router.add_get("/v1/models", _ok)
    app.router.add_get("/api/tags", _ok)
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    port = fake_host.run(start())
    yield f"http://127.0.0.1:{port}"
    fake_host.run(runner.cleanup())


@pytest.fixture(scope="module")
def client(stub, start_gateway):
    gateway = start_gateway(gateway_config(
        {"claude": {"type": "anthropic", "model": "broken-claude", "api_key": "k", "base_url": stub},
         "llama": {"type": "ollama", "model": "broken-llama", "base_url": stub}},
        preference=["claude"]))
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)


async def _ok(_: web.Request) -> web.Response:
    return web.json_response({})


def ask(client, model: str, text: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def test_a_200_whose_body_is_not_json_becomes_a_502(client):
    with pytest.raises(openai.APIStatusError) as err:
        ask(client, "broken-claude", "garbage")
    assert err.value.status_code == 502
    assert "unreadable" in err.value.body["message"]


@pytest.mark.parametrize("model,text", [("broken-claude", "truncated"), ("broken-llama", "truncated"),
                                        ("broken-llama", "garbage line")])
def test_a_broken_stream_ends_with_an_error_event_not_a_hang(client, model, text):
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in ask(client, model, text, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received  # what arrived before the break was passed on
    assert "unexpectedly" in str(err.value) or "unreadable" in str(err.value)


def test_invalid_utf8_in_a_stream_is_replaced_not_fatal(client):
    chunks = list(ask(client, "broken-claude", "bad utf-8", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("caf") and "\ufffd" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_the_gateway_keeps_serving_after_broken_providers(client):
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            ask(client, "broken-claude", "garbage")
    # (Repeated 502s may get the Anthropic stub ejected by outlier detection:
    # that is failover doing its job. The Ollama side must still answer.)
    chunks = list(ask(client, "broken-llama", "fine", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "part"
