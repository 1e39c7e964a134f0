"""The model lane, for real: requests Envoy routes from the body's model, straight to the upstream step.

Two OpenAI fakes serve the same model under different keys, then an Anthropic
fake. Whether the router step ran is read from Envoy's stats of the HCM's
ext_proc filter (the upstream step's filter lives in the chain clusters); what
was counted, from /metrics. Counts that the access log makes arrive a moment
after the answer, and one made twice would show up a moment later too: hence
``settled``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import openai
import pytest
from aiohttp import web

from hapax.fakes import FakeOpenAI
from hapax.fakes.faults import CutStream, Status
from tests.conftest import gateway_config, wait_for
from tests.e2e.test_failover_e2e import provider_states
from tests.e2e.test_passthrough_e2e import (  # the same three providers
    CLAUDE_KEY,
    MODEL,
    PRIMARY_KEY,
    SECOND_KEY,
    fresh_client,
    lane_fakes,
    two_accounts_and_claude,
)

CLIENT_KEY = "sk-client-of-the-model-lane"
CHAT = "/v1/chat/completions"
# Longer than the access log's flush interval (250 ms): a count it would add has arrived.
LOG_FLUSH = 1.0


@pytest.fixture(scope="module")
def fakes(fake_host):
    yield from lane_fakes(fake_host)


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(two_accounts_and_claude(fakes, [
        {"path": CHAT, "handler": "chat"}, {"path": "/v1/completions", "handler": "completion"}]))


@pytest.fixture()
def client(gateway, fakes):
    return fresh_client(gateway, fakes, CLIENT_KEY)


def _stat(gateway, name: str) -> int:
    lines = gateway.admin(f"/stats?filter=^{name}$").splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if line.strip())


def router_steps(gateway) -> int:
    """gRPC streams the HCM's ext_proc filter (the router step) opened."""
    return _stat(gateway, r"http\.hapax\.ext_proc\.streams_started")


def upstream_steps(gateway) -> int:
    return _stat(gateway, r"cluster\.chain_.*\.ext_proc\.streams_started")


def stream(client, text: str, model: str = MODEL, *, asks_usage: bool = False) -> list:
    """``asks_usage`` with the provider's own model: a body the provider takes as it is."""
    options = {"stream_options": {"include_usage": True}} if asks_usage else {}
    chunks = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], stream=True,
                                            **options)
    return list(chunks)


def text_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def settled(read, expected, what: str) -> None:
    """``read()`` reaches ``expected`` and is still there once the access log has flushed."""
    wait_for(lambda: read() == expected, what)
    time.sleep(LOG_FLUSH)
    assert read() == expected, f"{what}: counted again"


def test_a_stream_naming_a_known_model_goes_straight_to_the_upstream_step(gateway, client, fakes):
    primary = fakes[0]
    answered = {"route": CHAT, "provider": "primary", "status_class": "2xx", "outcome": "success"}
    tokens = {"route": CHAT, "provider": "primary", "gen_ai_token_type": "output"}
    requests, counted = gateway.metric("hapax_requests_total", **answered), \
        gateway.metric("gen_ai_client_token_usage_count", **tokens)
    routers, upstreams = router_steps(gateway), upstream_steps(gateway)
    chunks = stream(client, "stream lane")
    assert text_of(chunks).endswith("stream lane")
    assert all(c.choices for c in chunks)  # the usage chunk the gateway asked for stays with it
    assert router_steps(gateway) == routers
    assert upstream_steps(gateway) == upstreams + 1
    sent = primary.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {PRIMARY_KEY}"
    assert sent.body["stream_options"] == {"include_usage": True}
    # What the route stamps for the upstream step stays in the gateway.
    assert not {"x-hapax-start", "x-hapax-version", "x-hapax-chain"} & set(sent.headers)
    settled(lambda: gateway.metric("hapax_requests_total", **answered), requests + 1, "the stream counted once")
    assert gateway.metric("gen_ai_client_token_usage_count", **tokens) == counted + 1
    assert gateway.metric("hapax_inflight_requests", route=CHAT) == 0


def test_an_alias_and_another_providers_model_stream_on_the_lane_translated(gateway, client, fakes):
    primary, _, claude = fakes
    routers = router_steps(gateway)
    assert text_of(stream(client, "by alias", model="mini")).endswith("by alias")
    assert primary.requests[-1].body["model"] == MODEL
    chunks = stream(client, "to claude", model="claude-3-haiku")
    assert text_of(chunks).endswith("to claude")
    assert chunks[0].object == "chat.completion.chunk"
    assert claude.requests[-1].path == "/v1/messages"
    assert claude.requests[-1].headers["x-api-key"] == CLAUDE_KEY
    assert router_steps(gateway) == routers




def test_a_stream_no_provider_could_serve_is_counted_once_by_the_access_log(gateway, client, fakes):
    for fake in fakes:
        fake.inject(Status(500), times=1, method="POST")
    failed = {"route": CHAT, "status_class": "5xx", "outcome": "provider_error"}
    before = gateway.metric("hapax_requests_total", **failed)
    with pytest.raises(openai.InternalServerError):
        stream(client, "everyone is down")
    settled(lambda: gateway.metric("hapax_requests_total", **failed), before + 1, "the failure counted once")
    assert gateway.metric("hapax_inflight_requests", route=CHAT) == 0


async def _post(url: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


def test_an_invalid_stream_request_gets_the_upstream_steps_error_and_reaches_no_provider(gateway, client, fakes):
    refused = {"route": CHAT, "provider": "none", "status_class": "4xx", "outcome": "client_error"}
    before = gateway.metric("hapax_requests_total", **refused)
    routers = router_steps(gateway)
    status, body = asyncio.run(_post(gateway.base_url + "/chat/completions",
                                     {"model": MODEL, "stream": True, "messages": "not a list"}))
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "messages"
    assert router_steps(gateway) == routers  # the upstream step checked it
    assert all(not fake.requests for fake in fakes)
    settled(lambda: gateway.metric("hapax_requests_total", **refused), before + 1, "the client error counted once")


def test_a_stream_of_an_unknown_model_still_gets_the_router_steps_answer(gateway, client, fakes):
    routers = router_steps(gateway)
    with pytest.raises(openai.NotFoundError) as err:
        stream(client, "who?", model="no-such-model")
    assert err.value.code == "model_not_found"
    assert router_steps(gateway) == routers + 1


@pytest.mark.parametrize("asks_usage", [False, True], ids=["rewritten", "as_sent"])
def test_a_stream_cut_by_the_provider_on_the_lane_ends_with_an_error_event_and_is_counted(gateway, client, fakes,
                                                                                          asks_usage):
    primary = fakes[0]
    aborted = {"route": CHAT, "provider": "primary", "outcome": "stream_aborted"}
    before = gateway.metric("hapax_requests_total", **aborted)
    primary.inject(CutStream(after_chunks=2, reset=False), times=1, method="POST")
    with pytest.raises(openai.APIError, match="ended unexpectedly"):
        stream(client, "a long story", asks_usage=asks_usage)
    settled(lambda: gateway.metric("hapax_requests_total", **aborted), before + 1, "the cut stream counted once")
    assert gateway.metric("hapax_inflight_requests", route=CHAT) == 0


def test_a_legacy_completion_stream_takes_the_lane_in_its_own_shape(gateway, client, fakes):
    routers = router_steps(gateway)
    chunks = list(client.completions.create(model=MODEL, prompt="once upon a time", stream=True))
    assert chunks and all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices).endswith("once upon a time")
    assert fakes[0].requests[-1].path == "/v1/chat/completions"
    assert router_steps(gateway) == routers


async def _slow_upload(url: str, body: bytes, pause: float) -> int:
    async def pieces():
        yield body[:10]
        await asyncio.sleep(pause)  # Envoy has the headers; the route needs the whole body
        yield body[10:]

    async with aiohttp.ClientSession() as session, \
            session.post(url, data=pieces(), headers={"content-type": "application/json"}) as resp:
        await resp.read()
        return resp.status


def test_a_model_lane_request_is_timed_from_when_its_client_began_to_send(gateway, client, fakes):
    # The route stamps the request's start; without it the upstream step would time it from its own start.
    timed = {"route": CHAT, "provider": "primary"}
    count = gateway.metric("gen_ai_server_request_duration_seconds_count", **timed)
    total = gateway.metric("gen_ai_server_request_duration_seconds_sum", **timed)
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "slowly"}]})
    assert asyncio.run(_slow_upload(gateway.base_url + "/chat/completions", body.encode(), 0.5)) == 200
    wait_for(lambda: gateway.metric("gen_ai_server_request_duration_seconds_count", **timed) == count + 1,
             "the stream timed")
    assert gateway.metric("gen_ai_server_request_duration_seconds_sum", **timed) - total >= 0.5


def ask(client, text: str, model: str):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def test_an_alias_or_another_apis_model_skips_the_router_step_and_is_counted_once(gateway, client, fakes):
    primary, _, claude = fakes
    answered = {"route": CHAT, "provider": "claude", "status_class": "2xx", "outcome": "success"}
    tokens = {"route": CHAT, "provider": "claude", "gen_ai_token_type": "input"}
    requests, counted = gateway.metric("hapax_requests_total", **answered), \
        gateway.metric("gen_ai_client_token_usage_count", **tokens)
    routers = router_steps(gateway)
    assert ask(client, "by alias", "mini").choices[0].message.content.endswith("by alias")
    assert primary.requests[-1].body["model"] == MODEL
    reply = ask(client, "to claude", "claude-3-haiku")
    assert reply.object == "chat.completion" and reply.choices[0].message.content.endswith("to claude")
    assert claude.requests[-1].headers["x-api-key"] == CLAUDE_KEY
    assert router_steps(gateway) == routers
    # The answer by the access log, its tokens by the upstream step: each once.
    settled(lambda: gateway.metric("hapax_requests_total", **answered), requests + 1, "the answer counted once")
    assert gateway.metric("gen_ai_client_token_usage_count", **tokens) == counted + 1
    assert gateway.metric("hapax_inflight_requests", route=CHAT) == 0


@pytest.mark.parametrize("streams", [False, True], ids=["json", "stream"])
def test_auto_takes_the_lane_to_the_preferred_provider_and_is_priced_as_its_model(gateway, client, fakes, streams):
    primary = fakes[0]
    answered = {"route": CHAT, "provider": "primary", "model": MODEL, "status_class": "2xx", "outcome": "success"}
    tokens = {"route": CHAT, "provider": "primary", "model": MODEL, "gen_ai_token_type": "output"}
    requests, counted = gateway.metric("hapax_requests_total", **answered), \
        gateway.metric("gen_ai_client_token_usage_count", **tokens)
    routers, upstreams = router_steps(gateway), upstream_steps(gateway)
    if streams:
        assert text_of(stream(client, "auto stream", model="auto")).endswith("auto stream")
    else:
        assert ask(client, "auto json", "auto").choices[0].message.content.endswith("auto json")
    assert router_steps(gateway) == routers
    assert upstream_steps(gateway) == upstreams + 1
    assert primary.requests[-1].body["model"] == MODEL  # the preferred provider's own model, not "auto"
    settled(lambda: gateway.metric("hapax_requests_total", **answered), requests + 1, "auto counted once")
    assert gateway.metric("gen_ai_client_token_usage_count", **tokens) == counted + 1


@pytest.mark.parametrize("kind", ["json", "stream", "stream_as_sent"])
def test_a_model_lane_failover_counts_its_retry_and_its_failover_once(gateway, client, fakes, kind):
    primary, second, _ = fakes
    failed_over = {"route": CHAT, "provider": "second", "outcome": "failed_over"}
    retried = {"route": CHAT, "provider": "second"}
    failovers, retries = gateway.metric("hapax_requests_total", **failed_over), \
        gateway.metric("hapax_retries_total", **retried)
    primary.inject(Status(500), times=1, method="POST")
    if kind == "json":
        assert ask(client, "primary is down", "mini").choices[0].message.content.endswith("primary is down")
    else:  # by alias the body is rewritten; by the providers' own model it goes as sent
        as_sent = kind == "stream_as_sent"
        chunks = stream(client, "primary is down", model=MODEL if as_sent else "mini", asks_usage=as_sent)
        assert text_of(chunks).endswith("primary is down")
    sent = second.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {SECOND_KEY}"
    assert sent.body["model"] == MODEL  # the alias rewritten for the provider it failed over to
    if kind == "stream_as_sent":
        assert sent.raw == primary.requests[-1].raw  # the same bytes to each attempt
    settled(lambda: gateway.metric("hapax_requests_total", **failed_over), failovers + 1, "the failover counted once")
    assert gateway.metric("hapax_retries_total", **retried) == retries + 1


def test_an_invalid_request_on_the_model_lane_gets_the_same_error_as_from_the_router_step(gateway, client, fakes):
    body = {"model": "mini", "messages": [{"role": "user", "content": 42}]}
    on_lane = asyncio.run(_post(gateway.base_url + "/chat/completions", body))
    # No model: the preference chain, chosen by the router step (the lane needs a model to route on).
    routers = router_steps(gateway)
    via_router = asyncio.run(_post(gateway.base_url + "/chat/completions",
                                   {k: v for k, v in body.items() if k != "model"}))
    assert router_steps(gateway) == routers + 1
    assert on_lane[0] == via_router[0] == 400
    assert on_lane[1] == via_router[1]
    assert all(not fake.requests for fake in fakes)


def test_a_client_cannot_turn_failover_off_on_a_lane_with_envoys_retry_headers(gateway, fakes):
    primary, second, _ = fakes
    for fake in fakes:
        fake.reset()
    primary.inject(Status(500), times=1, method="POST")
    # The router step overwrote x-envoy-max-retries; a lane route has no step, and Envoy must not honour it.
    client = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30,
                           default_headers={"x-envoy-max-retries": "0"})
    assert ask(client, "still fails over", "mini").choices[0].message.content.endswith("still fails over")
    assert len(second.requests) == 1


def test_an_openai_json_answer_on_the_lane_is_read_by_envoy_not_ext_proc(gateway, client, fakes):
    tokens = {"route": CHAT, "provider": "primary", "gen_ai_token_type": "output"}
    counted = gateway.metric("gen_ai_client_token_usage_sum", **tokens)
    sent_before = _stat(gateway, r"cluster\.chain_.*\.ext_proc\.stream_msgs_sent")
    reply = ask(client, "by alias, read by Envoy", "mini")
    assert reply.choices[0].message.content.endswith("by alias, read by Envoy")
    # Request headers, request body, response headers: the answer's body never crossed to Python.
    assert _stat(gateway, r"cluster\.chain_.*\.ext_proc\.stream_msgs_sent") - sent_before == 3
    settled(lambda: gateway.metric("gen_ai_client_token_usage_sum", **tokens),
            counted + reply.usage.completion_tokens, "the answer's tokens counted once, from Envoy's read")


def test_a_converted_json_answer_costs_four_ext_proc_messages(gateway, client, fakes):
    claude = fakes[2]
    sent_before = _stat(gateway, r"cluster\.chain_.*\.ext_proc\.stream_msgs_sent")
    reply = ask(client, "one message for the answer", "claude-3-haiku")
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content.endswith("one message for the answer")
    assert claude.requests[-1].path == "/v1/messages"
    # Request headers, request body, response headers, response body. Not three: Envoy 1.40 applies
    # the header mutations of a body message only to headers it sent to ext_proc (processor_state.cc),
    # and the answer's status (a 200 with an unusable body is a 502) and headers are the step's to set.
    assert _stat(gateway, r"cluster\.chain_.*\.ext_proc\.stream_msgs_sent") - sent_before == 4


def test_a_converted_error_keeps_its_status_and_becomes_openai_error_json(gateway, client, fakes):
    claude = fakes[2]
    claude.inject(Status(400), times=1, method="POST")
    status, body = asyncio.run(_post(gateway.base_url + "/chat/completions",
                                     {"model": "claude-3-haiku", "messages": [{"role": "user", "content": "x"}]}))
    assert status == 400
    assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error"


def test_no_key_reaches_the_lanes_logs_errors_or_metrics(gateway, client, fakes):
    fakes[0].inject(Status(500), times=1, method="POST")
    assert ask(client, "logged failover", "mini").choices[0].message.content.endswith("logged failover")
    status, body = asyncio.run(_post(gateway.base_url + "/chat/completions",
                                     {"model": "claude-3-haiku", "messages": "not a list"}))
    assert status == 400
    # The logs searched hold the lane's attempts (the failover's warning names its provider).
    wait_for(lambda: "Envoy retries elsewhere" in "".join(gateway.stderr), "the failed attempt logged")
    with urllib.request.urlopen(gateway.metrics_url, timeout=5) as resp:
        metrics = resp.read().decode()
    seen = "".join(gateway.stderr) + json.dumps(body) + metrics
    for key in (PRIMARY_KEY, SECOND_KEY, CLAUDE_KEY, CLIENT_KEY):
        assert key not in seen


async def _post_raw(url: str, body: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, \
            session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
        return resp.status, await resp.read()


async def _post_raw_whole(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """Reads to the end of the connection's stream, whatever Content-Length says."""
    async with aiohttp.ClientSession() as session, \
            session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.content.read()


def _events(raw: bytes) -> list[dict]:
    data = [line.removeprefix(b"data: ") for line in raw.splitlines() if line.startswith(b"data: ")]
    assert data[-1] == b"[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_a_stream_body_the_provider_takes_as_it_is_reaches_it_byte_for_byte(gateway, client, fakes):
    primary = fakes[0]
    tokens = {"route": CHAT, "provider": "primary", "gen_ai_token_type": "output"}
    counted = gateway.metric("gen_ai_client_token_usage_count", **tokens)
    # Its own model's name, and the usage chunk asked for: nothing for the gateway to change.
    body = (b'{"model": "%s",  "stream": true, "stream_options": {"include_usage": true},\n'
            b' "messages": [{"role": "user", "content": "as sent"}], "user": "u-7"}' % MODEL.encode())
    status, raw = asyncio.run(_post_raw(gateway.base_url + "/chat/completions", body))
    assert status == 200
    events = _events(raw)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]).endswith("as sent")
    assert events[-1]["usage"]["completion_tokens"] > 0  # the usage chunk the client asked for
    sent = primary.requests[-1]
    assert sent.raw == body
    assert sent.headers["authorization"] == f"Bearer {PRIMARY_KEY}" and sent.path == "/v1/chat/completions"
    assert not [h for h in sent.headers if h.startswith("x-hapax-")]
    wait_for(lambda: gateway.metric("gen_ai_client_token_usage_count", **tokens) == counted + 1, "its tokens counted")


def test_a_body_sent_as_it_is_is_checked_by_the_provider_not_the_gateway(gateway, client, fakes):
    primary = fakes[0]
    refused = {"route": CHAT, "provider": "primary", "status_class": "4xx"}
    before = gateway.metric("hapax_requests_total", **refused)
    # What the upstream step would refuse (see the invalid stream request above), had it read the body.
    primary.inject(Status(400), times=1, method="POST")
    status, body = asyncio.run(_post(gateway.base_url + "/chat/completions", {
        "model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "messages": "not a list"}))
    assert status == 400 and body["error"]["param"] != "messages"  # the provider's answer, passed on
    assert len(primary.requests) == 1
    settled(lambda: gateway.metric("hapax_requests_total", **refused), before + 1, "the provider's 400 counted once")


def test_a_retry_after_on_a_stream_sent_as_it_is_keeps_traffic_off_the_provider(gateway, client, fakes):
    primary, second, _ = fakes
    primary.inject(Status(429, retry_after=2), times=1, method="POST")
    # The step does not read this answer's headers: Envoy's log of the attempt carries the retry-after.
    assert text_of(stream(client, "quota?", asks_usage=True)).endswith("quota?")
    assert len(second.requests) == 1
    wait_for(lambda: provider_states(gateway)["primary"] == "holding_off", "the primary held off")
    wait_for(lambda: provider_states(gateway)["primary"] == "healthy", "the retry-after to pass")


class TerseSseOpenAI(FakeOpenAI):
    """An OpenAI-compatible server whose stream has a Content-Length and no space after "data:"."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "terse-1",
                 "choices": [{"index": 0, "delta": {"content": "terse"}, "finish_reason": "stop"}]}
        usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        body = b"".join(b"data:" + json.dumps(e).encode() + b"\n\n" for e in (chunk, usage)) + b"data:[DONE]\n\n"
        return web.Response(body=body, content_type="text/event-stream")


def test_a_stream_sent_as_it_is_and_rewritten_by_the_step_reaches_its_client_whole(fake_host, start_gateway):
    # The step re-frames each event ("data: "), so the provider's Content-Length no longer holds;
    # the step does not read these headers, and Envoy drops the length of a body it streams to ext_proc.
    terse = fake_host.start(TerseSseOpenAI(api_key="kt", model="terse-1"))
    try:
        gateway = start_gateway(gateway_config(
            {"terse": {"type": "openai", "model": "terse-1", "api_key": "kt", "base_url": terse.base_url}},
            routes=[{"path": CHAT, "handler": "chat"}]))
        body = json.dumps({"model": "terse-1", "stream": True, "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": "terse?"}]}).encode()
        status, headers, raw = asyncio.run(_post_raw_whole(gateway.base_url + "/chat/completions", body))
        assert status == 200
        assert raw.endswith(b"data: [DONE]\n\n"), raw[-40:]  # every byte the step sent, none cut off
        assert headers.get("content-length") in (None, str(len(raw)))
        assert [e["choices"][0]["delta"]["content"] for e in _events(raw) if e["choices"]] == ["terse"]
        gateway.stop()
    finally:
        fake_host.run(terse.stop())
