"""Clients written for Anthropic's Messages API, pointed at Hapax: the official ``anthropic`` SDK.

``messages.create`` and ``messages.stream`` (text, tools, streamed tool input) against each
provider type, translated through the canonical chat form; a failover from one provider type
to another before the first byte; Anthropic's error shape for what the gateway refuses.
"""

from __future__ import annotations

import json

import anthropic
import pytest

from hapax.client_keys import new_key
from hapax.fakes.faults import Status
from tests.conftest import gateway_config, wait_for
from tests.inbound_apis import MODELS, one_fake_per_type, one_provider_per_type, posted
from tests.raw_http import send

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def fakes(fake_host):
    with one_fake_per_type(fake_host) as fakes:
        yield fakes


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(one_provider_per_type(fakes, ["anthropic", "openai", "ollama"]))


@pytest.fixture()
def client(gateway, fakes) -> anthropic.Anthropic:
    for fake in fakes.values():
        fake.reset()
        fake.clear_faults()
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=30)


@pytest.mark.parametrize("kind", list(MODELS))
def test_messages_create_is_answered_by_each_provider_type_with_usage(client, fakes, kind):
    message = client.messages.create(model=MODELS[kind], max_tokens=64, system="Be brief.",
                                     messages=[{"role": "user", "content": "Say hello"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert len(posted(fakes[kind])) == 1  # the named model's provider answered


@pytest.mark.parametrize("kind", list(MODELS))
def test_messages_stream_carries_anthropics_event_sequence_and_the_final_usage(client, fakes, kind):
    with client.messages.stream(model=MODELS[kind], max_tokens=64,
                                messages=[{"role": "user", "content": "Tell me a story"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.content[0].type == "text" and final.content[0].text
    assert final.usage.output_tokens > 0
    assert len(posted(fakes[kind])) == 1


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_tool_call_round_trip_in_anthropics_blocks(client, kind):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(model=MODELS[kind], max_tokens=64, tools=[WEATHER], messages=ask)
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict)
    answered = client.messages.create(model=MODELS[kind], max_tokens=64, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": first.content},  # as Anthropic's docs show: the blocks as they came
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]}])
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


def test_streamed_tool_input_arrives_as_input_json_deltas(client):
    with client.messages.stream(model=MODELS["openai"], max_tokens=64, tools=[WEATHER],
                                messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        deltas = [event.delta.type for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    call = next(block for block in final.content if block.type == "tool_use")
    assert call.name == "get_weather" and call.input  # the partial JSON put together again


def test_failover_crosses_from_an_anthropic_provider_to_an_openai_one_before_the_first_byte(client, fakes):
    fakes["anthropic"].inject(Status(529), times=None, method="POST")
    message = client.messages.create(model=MODELS["anthropic"], max_tokens=64,
                                     messages=[{"role": "user", "content": "Still there?"}])
    assert message.content[0].text and message.usage.output_tokens > 0
    assert len(posted(fakes["openai"])) == 1  # the next of the chain, in its own format


def test_what_the_gateway_refuses_is_anthropics_error_shape(client):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODELS["openai"], max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "max_tokens" in body["error"]["message"]


def test_a_malformed_or_mistyped_messages_body_is_a_400_in_anthropics_shape_and_the_gateway_serves_on(gateway, client):
    for raw in (b'{"model": "claude', b'[]', b'{"model": 7, "max_tokens": 8, "messages": []}'):
        answer = send(gateway, "POST", "/v1/messages", raw, {"anthropic-version": "2023-06-01"})
        assert answer.status == 400, raw
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error", raw
    assert client.messages.create(model=MODELS["openai"], max_tokens=8,
                                  messages=[{"role": "user", "content": "still here"}]).content[0].text


def test_envoys_own_refusal_on_a_messages_route_is_anthropics_error_shape(fakes, start_gateway):
    """A missing key is refused by Envoy itself (the key check, before ext_proc): in Anthropic's shape."""
    key, line = new_key()
    config = gateway_config({"openai": {"type": "openai", "model": MODELS["openai"], "api_key": "k",
                                        "base_url": fakes["openai"].base_url}})
    config["clients"] = {"app": {"keys": [line.htpasswd]}}
    gateway = start_gateway(config)
    refused = anthropic.Anthropic(base_url=gateway.url, api_key="hpx-000000000000-" + "0" * 48, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        refused.messages.create(model=MODELS["openai"], max_tokens=8, messages=[{"role": "user", "content": "x"}])
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error" and "API key" in body["error"]["message"]
    allowed = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)  # x-api-key: the client key
    assert allowed.messages.create(model=MODELS["openai"], max_tokens=8,
                                   messages=[{"role": "user", "content": "x"}]).content[0].text


def test_an_anthropic_providers_own_model_takes_the_lane_its_body_as_it_came(gateway, fakes):
    """Anthropic to Anthropic: Envoy alone sends the body as the client wrote it (top_k, which no chat
    can say, included), with the provider's key in x-api-key and the client's version header."""
    fakes["anthropic"].reset()
    body = json.dumps({"model": MODELS["anthropic"], "max_tokens": 32, "top_k": 5,
                       "messages": [{"role": "user", "content": "as it came"}]}).encode()
    before = gateway.metric_total("gen_ai_client_token_usage_sum", provider="anthropic")
    answer = send(gateway, "POST", "/v1/messages", body,
                  {"anthropic-version": "2023-06-01", "x-api-key": "the-clients-own"})
    assert answer.status == 200 and answer.json()["type"] == "message"
    [received] = posted(fakes["anthropic"])
    assert received.raw == body  # not re-encoded: the lane, not a translation
    assert received.headers["x-api-key"] == "k" and received.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in received.headers
    usage = answer.json()["usage"]
    # Envoy read the answer's usage (its own names) for the metrics, as for OpenAI's lane.
    wait_for(lambda: gateway.metric_total("gen_ai_client_token_usage_sum", provider="anthropic")
             == before + usage["input_tokens"] + usage["output_tokens"], "the lane's tokens counted")


def test_a_client_written_for_anthropic_is_answered_by_an_openai_only_gateway_with_usage(fakes, start_gateway):
    """Claude Code and the like name Claude models: the operator's alias maps one to an OpenAI model."""
    config = gateway_config({"openai": {"type": "openai", "model": MODELS["openai"], "api_key": "k",
                                        "base_url": fakes["openai"].base_url, "aliases": ["claude-sonnet-4-5"]}})
    gateway = start_gateway(config)
    fakes["openai"].reset()
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=30)
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                     messages=[{"role": "user", "content": "Who answers?"}])
    assert message.content[0].type == "text" and "fake-openai" in message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    [received] = posted(fakes["openai"])
    assert received.path == "/v1/chat/completions" and received.body["model"] == MODELS["openai"]
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                                messages=[{"role": "user", "content": "And streaming?"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text and final.usage.output_tokens > 0
    # A Claude model nobody configured is Anthropic's not_found_error, which the SDK reads.
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="claude-opus-4-1", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["error"]["type"] == "not_found_error"


def test_a_stream_to_an_anthropic_provider_goes_as_the_client_wrote_it_with_its_betas(gateway, fakes, client):
    """Not the lane (a stream): the upstream step sends the client's own body (top_k, which no chat can
    say, included) with its anthropic-beta header, and counts the tokens from Anthropic's events."""
    before = gateway.metric_total("gen_ai_client_token_usage_sum", provider="anthropic")
    with client.messages.stream(model=MODELS["anthropic"], max_tokens=64, extra_body={"top_k": 3},
                                messages=[{"role": "user", "content": "as I wrote it"}],
                                extra_headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14"}) as stream:
        final = stream.get_final_message()
    [received] = posted(fakes["anthropic"])
    assert received.body["top_k"] == 3 and received.body["stream"] is True
    assert received.headers["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"
    assert received.headers["x-api-key"] == "k" and "authorization" not in received.headers  # not the client's
    total = final.usage.input_tokens + final.usage.output_tokens
    wait_for(lambda: gateway.metric_total("gen_ai_client_token_usage_sum", provider="anthropic") == before + total,
             "the stream's tokens counted")


def test_a_server_tool_only_anthropic_runs_is_refused_by_name_for_an_openai_model(client, fakes):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODELS["openai"], max_tokens=32,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}],
                               messages=[{"role": "user", "content": "news?"}])
    body = refused.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert "web_search_20250305" in body["error"]["message"] and "Anthropic runs it" in body["error"]["message"]
    assert posted(fakes["openai"]) == []


def test_count_tokens_is_anthropics_own_count_for_its_models_and_the_gateways_estimate_elsewhere(
        gateway, client, fakes):
    ask = [{"role": "user", "content": "How many tokens is this prompt?"}]
    counted = client.messages.count_tokens(model=MODELS["anthropic"], system="Be brief.", messages=ask)
    [received] = posted(fakes["anthropic"])
    assert received.path == "/v1/messages/count_tokens" and received.body["system"] == "Be brief."
    answered = client.messages.create(model=MODELS["anthropic"], max_tokens=16, system="Be brief.", messages=ask)
    assert counted.input_tokens == answered.usage.input_tokens  # the provider's own count, exact
    raw = send(gateway, "POST", "/v1/messages/count_tokens", {"model": MODELS["openai"], "messages": ask},
               {"anthropic-version": "2023-06-01"})
    assert raw.status == 200 and raw.headers["x-hapax-token-count"] == "estimated"
    assert raw.json()["input_tokens"] > 0 and posted(fakes["openai"]) == []  # no provider asked
    with pytest.raises(anthropic.BadRequestError) as refused:  # a count takes no answer's fields
        client.messages.count_tokens(model=MODELS["openai"], messages=ask, extra_body={"max_tokens": 5})
    assert refused.value.body["error"]["type"] == "invalid_request_error"
