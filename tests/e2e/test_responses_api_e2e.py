"""Clients written for OpenAI's Responses API, pointed at Hapax: the official ``openai`` SDK's
``responses.create``.

JSON and stream against each provider type: to OpenAI the body goes as the client wrote it (its
lane, or the upstream step's native request), to Anthropic and Ollama it is translated through
the canonical chat; a function-calling round trip; a failover from OpenAI to Anthropic before the
first byte; what only OpenAI can serve (state it holds) refused by name elsewhere; errors in
OpenAI's shape; tokens counted as a chat's.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from hapax.client_keys import new_key
from hapax.fakes.faults import Latency, Status
from tests.conftest import gateway_config, wait_for
from tests.e2e.test_ledger_e2e import records
from tests.inbound_apis import MODELS, one_fake_per_type, one_provider_per_type, posted
from tests.raw_http import send

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


@pytest.fixture(scope="module")
def fakes(fake_host):
    with one_fake_per_type(fake_host) as fakes:
        yield fakes


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(one_provider_per_type(fakes, ["openai", "anthropic", "ollama"]))


@pytest.fixture()
def client(gateway, fakes) -> openai.OpenAI:
    for fake in fakes.values():
        fake.reset()
        fake.clear_faults()
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def settled_tokens(gateway, provider: str) -> float:
    """The provider's token count once an earlier test's answers are all in: the access log brings a
    lane's in batches (every 250 ms), so a count read too soon would be short of them."""
    def read() -> float:
        return gateway.metric_total("gen_ai_client_token_usage_sum", provider=provider)
    previous = read()
    while True:
        time.sleep(0.6)
        now = read()
        if now == previous:
            return now
        previous = now


@pytest.mark.parametrize("kind", list(MODELS))
def test_responses_create_is_answered_by_each_provider_type_with_usage(client, fakes, kind):
    response = client.responses.create(model=MODELS[kind], instructions="Be brief.", input="Say hello",
                                       max_output_tokens=64)
    assert response.object == "response" and response.status == "completed"
    assert response.output_text and response.output[0].type == "message"
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.instructions == "Be brief."  # the Response echoes the request, translated or not
    [received] = posted(fakes[kind])  # the named model's provider answered
    if kind == "openai":  # it speaks the Responses API: the client's own body
        assert received.path == "/v1/responses" and received.body["instructions"] == "Be brief."


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_responses_stream_carries_the_event_sequence_and_the_final_usage(client, fakes, kind):
    stream = client.responses.create(model=MODELS[kind], input="Tell me a story", stream=True)
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert {"response.output_item.added", "response.output_text.delta", "response.output_item.done"} <= set(kinds)
    assert [event.sequence_number for event in events] == sorted(event.sequence_number for event in events)
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0
    assert len(posted(fakes[kind])) == 1


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_function_call_round_trip_in_responses_items(client, kind):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.responses.create(model=MODELS[kind], input=ask, tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments), dict)
    answered = client.responses.create(model=MODELS[kind], tools=[WEATHER], input=[
        *ask, *[item.model_dump(exclude_none=True) for item in first.output],  # the items as they came
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}])
    assert answered.status == "completed" and answered.output_text


def test_streamed_function_arguments_arrive_as_their_deltas(client):
    events = list(client.responses.create(model=MODELS["anthropic"], input="Weather in Oslo?", tools=[WEATHER],
                                          stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert deltas and json.loads(deltas) == json.loads(done.arguments)
    [call] = [item for item in events[-1].response.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == json.loads(deltas)


def test_an_openai_providers_own_model_takes_the_lane_its_body_as_it_came(gateway, fakes, client):
    body = json.dumps({"model": MODELS["openai"], "input": "as it came", "store": False,
                       "include": ["message.output_text.logprobs"], "top_logprobs": 2}).encode()
    before = settled_tokens(gateway, "openai")
    answer = send(gateway, "POST", "/v1/responses", body, {"authorization": "Bearer the-clients-own"})
    assert answer.status == 200 and answer.json()["object"] == "response"
    [received] = posted(fakes["openai"])
    assert received.raw == body  # not re-encoded: Envoy alone, as for a chat
    assert received.headers["authorization"] == "Bearer k"
    usage = answer.json()["usage"]
    wait_for(lambda: gateway.metric_total("gen_ai_client_token_usage_sum", provider="openai")
             == before + usage["input_tokens"] + usage["output_tokens"], "the lane's tokens counted")


def test_a_stream_to_openai_goes_as_the_client_wrote_it_and_its_tokens_are_counted(gateway, fakes, client):
    before = settled_tokens(gateway, "openai")
    events = list(client.responses.create(model=MODELS["openai"], input="count me", stream=True,
                                          reasoning={"summary": "auto"}, truncation="auto"))
    [received] = posted(fakes["openai"])
    assert received.path == "/v1/responses"
    assert received.body["reasoning"] == {"summary": "auto"} and received.body["truncation"] == "auto"
    assert received.headers["authorization"] == "Bearer k"  # the provider's key, never the client's
    usage = events[-1].response.usage
    wait_for(lambda: gateway.metric_total("gen_ai_client_token_usage_sum", provider="openai")
             == before + usage.input_tokens + usage.output_tokens, "the stream's tokens counted")


def test_failover_crosses_from_openai_to_anthropic_before_the_first_byte(client, fakes):
    fakes["openai"].inject(Status(500), times=None, method="POST")
    response = client.responses.create(model=MODELS["openai"], input="Still there?")
    assert response.output_text and response.usage.output_tokens > 0
    assert len(posted(fakes["anthropic"])) == 1  # the next of the chain, translated
    stream = list(client.responses.create(model=MODELS["openai"], input="And streaming?", stream=True))
    assert stream[-1].type == "response.completed" and len(posted(fakes["anthropic"])) == 2


def test_what_only_openai_holds_goes_to_openai_and_is_refused_by_name_elsewhere(client, fakes):
    # OpenAI holds its responses: the id reaches it (and the fake, which keeps none, says so).
    with pytest.raises(openai.BadRequestError) as at_openai:
        client.responses.create(model=MODELS["openai"], input="go on", previous_response_id="resp_abc")
    assert at_openai.value.code == "previous_response_not_found" and len(posted(fakes["openai"])) == 1
    # An Anthropic model cannot continue OpenAI's state: a 400 saying why, the provider never asked.
    with pytest.raises(openai.BadRequestError) as elsewhere:
        client.responses.create(model=MODELS["anthropic"], input="go on", previous_response_id="resp_abc")
    assert elsewhere.value.code == "untranslatable_request"
    assert "previous_response_id" in elsewhere.value.message and "keeps no responses" in elsewhere.value.message
    assert posted(fakes["anthropic"]) == []


def test_what_the_gateway_refuses_is_openais_error_shape_and_it_serves_on(gateway, client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODELS["anthropic"], input="x", max_output_tokens=4)
    assert refused.value.status_code == 400 and refused.value.param == "max_output_tokens"
    for raw in (b'{"model": "gpt', b"[]", b'{"model": 7, "input": "x"}'):
        answer = send(gateway, "POST", "/v1/responses", raw, {})
        assert answer.status == 400, raw
        assert answer.json()["error"]["type"] == "invalid_request_error", raw
    assert client.responses.create(model=MODELS["ollama"], input="still here").output_text


RESEARCH = "/v1/research/responses"


@pytest.fixture(scope="module")
def governed(fakes, start_gateway, tmp_path_factory):
    """A department's Responses route with a client key, a token limit, the ledger and coalescing."""
    key, line = new_key()
    providers = {kind: {"type": kind, "model": MODELS[kind], "base_url": fakes[kind].base_url, "api_key": "k"}
                 for kind in ("openai", "anthropic")}
    config = gateway_config(providers, preference=["openai", "anthropic"], routes=[
        {"path": RESEARCH, "handler": "responses", "metrics_labels": {"department": "research"}, "dedup": "always"}])
    config["clients"] = {"research-app": {"keys": [line.htpasswd], "limits": {"tokens_per_minute": 6000}}}
    config["pricing"] = {MODELS["anthropic"]: {"input": 3.0, "output": 4.0}}
    ledger = {"directory": str(tmp_path_factory.mktemp("ledger"))}
    config["ledger"] = ledger
    return start_gateway(config), key, ledger


def test_a_departments_responses_route_is_labelled_recorded_limited_and_coalesced(governed, fakes):
    gateway, key, ledger = governed
    for fake in fakes.values():
        fake.reset(), fake.clear_faults()
    client = openai.OpenAI(base_url=gateway.url + "/v1/research", api_key=key, max_retries=0, timeout=30)
    events = list(client.responses.create(model=MODELS["anthropic"], input="for the ledger", stream=True,
                                          max_output_tokens=100))
    usage = events[-1].response.usage
    # Labelled: the route's department on its series.
    wait_for(lambda: gateway.metric_total("hapax_requests_total", route=RESEARCH, department="research") == 1,
             "the request counted under its department")
    # Recorded: the stream's ledger record has the Responses usage, priced.
    wait_for(lambda: any(r["route"] == RESEARCH for r in records(ledger)), "the stream's ledger record")
    [record] = [r for r in records(ledger) if r["route"] == RESEARCH]
    assert (record["provider"], record["input_tokens"], record["output_tokens"], record["status"]) == (
        "anthropic", usage.input_tokens, usage.output_tokens, 200)
    assert record["cost_usd"] == pytest.approx((usage.input_tokens * 3.0 + usage.output_tokens * 4.0) / 1e6)
    # Limited: max_output_tokens is what a Responses request reserves, so one above the limit is refused.
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model=MODELS["anthropic"], input="too much", max_output_tokens=7000)
    assert refused.value.code == "rate_limit_exceeded"
    # Coalesced: identical requests in flight at once reach the provider once, each answered as a Response.
    fakes["openai"].reset()
    fakes["openai"].inject(Latency(1.5), times=None, method="POST")
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: client.responses.create(model=MODELS["openai"], input="same question",
                                                                  max_output_tokens=64), range(3)))
    assert len(posted(fakes["openai"])) == 1
    assert {a.output_text for a in answers} == {answers[0].output_text} and all(a.object == "response"
                                                                                 for a in answers)


def test_structured_output_and_reasoning_come_back_as_responses_items_from_anthropic(client):
    """text.format becomes Anthropic's forced JSON tool and back, so the SDK's parse() reads the object;
    reasoning.effort becomes extended thinking, which comes back as a reasoning item."""
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str
        celsius: float

    parsed = client.responses.parse(model=MODELS["anthropic"], input="Weather in Rome?", text_format=Weather)
    assert isinstance(parsed.output_parsed, Weather) and parsed.output_parsed.city
    thought = client.responses.create(model=MODELS["anthropic"], input="Think first: 2+2?",
                                      reasoning={"effort": "low"}, max_output_tokens=4000)
    assert [item.type for item in thought.output][:2] == ["reasoning", "message"]
    assert thought.output[0].content[0].text and thought.output_text


def test_a_translated_request_reports_the_fields_its_provider_was_not_sent(gateway):
    """To Anthropic, store and metadata (OpenAI's service) and top_p... are decided field by field:
    what is left out is named in x-hapax-dropped-params, never dropped silently; to OpenAI nothing is."""
    body = {"input": "x", "store": True, "metadata": {"team": "a"}, "top_p": 0.5}
    to_anthropic = send(gateway, "POST", "/v1/responses", {"model": MODELS["anthropic"], **body}, {})
    assert to_anthropic.status == 200
    assert to_anthropic.headers["x-hapax-dropped-params"] == "metadata, store"
    events = send(gateway, "POST", "/v1/responses", {"model": MODELS["openai"], "stream": True, **body}, {})
    assert events.status == 200 and "x-hapax-dropped-params" not in events.headers  # native: sent as it came
