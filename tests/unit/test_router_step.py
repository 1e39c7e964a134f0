"""The router step alone: the chain it picks for a request, and how it counts the request's answer.

Driven with the protobuf messages Envoy sends, over a RuntimeView read from a
``hapax.v1.Runtime`` and a GatewayMetrics of its own (its own registry).
"""

from __future__ import annotations

import json
import time

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.errors import GatewayError
from ext_proc.metrics import GatewayMetrics
from ext_proc.provider_health import ProviderProber
from ext_proc.runtime import RuntimeView
from ext_proc.steps.router import RouterStep
from hapax.v1 import runtime_pb2

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
CREDENTIALS = {"authorization": "Bearer client", "x-api-key": "client", "api-key": "client",
               "proxy-authorization": "Basic client"}


def _view() -> RuntimeView:
    rt = runtime_pb2.Runtime(config_version="v7")
    rt.providers.add(name="primary", type="openai", model="gpt-4o-mini", aliases=["fast"],
                     base_url="https://api.example.com/v1", cluster="provider.primary")
    rt.providers.add(name="second", type="anthropic", model="claude", base_url="https://api.anthropic.com",
                     cluster="provider.second")
    rt.routes.add(path=CHAT, handler="chat", metrics_labels={"department": "marketing"})
    rt.routes.add(path=MODELS, handler="models", metrics_labels={"department": "marketing"})
    rt.chains.add(cluster="chain.primary", providers=["primary", "second"], attempts=2)  # chains[0]: "auto"
    rt.chains.add(cluster="chain.second", providers=["second", "primary"], attempts=3)
    rt.models.add(name="gpt-4o-mini", provider="primary", chain="chain.primary")
    rt.models.add(name="fast", provider="primary", chain="chain.primary")
    rt.models.add(name="claude", provider="second", chain="chain.second")
    return RuntimeView.from_proto(rt, frozenset({"openai", "anthropic"}))


@pytest.fixture()
def view() -> RuntimeView:
    return _view()


@pytest.fixture()
def metrics(view: RuntimeView) -> GatewayMetrics:
    metrics = GatewayMetrics(ProviderProber(lambda _: None))
    metrics.configure(view)
    return metrics


@pytest.fixture()
def step(view: RuntimeView, metrics: GatewayMetrics) -> RouterStep:
    return RouterStep(view, metrics)


def _headers(fields: dict[str, str], end_of_stream: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in fields.items()]), end_of_stream=end_of_stream)


def _body(value: dict) -> pb.HttpBody:
    return pb.HttpBody(body=json.dumps(value).encode(), end_of_stream=True)


def _chat(model: str | None) -> pb.HttpBody:
    body: dict = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    return _body(body)


def _set(mutation: pb.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def _route_to(step: RouterStep, model: str | None) -> pb.CommonResponse:
    """The request's headers and body, as Envoy sends them; the body's answer."""
    step.request_headers(_headers({":path": CHAT, ":method": "POST", **CREDENTIALS}), None)
    return step.request_body(_chat(model), None).request_body.response


def _answered(metrics: GatewayMetrics) -> dict[tuple[str, str, str, str], float]:
    """Every hapax_requests_total series counted: (provider, model, status_class, outcome) -> count."""
    return {(s.labels["provider"], s.labels["model"], s.labels["status_class"], s.labels["outcome"]): s.value
            for family in metrics.registry.collect() if family.name == "hapax_requests"
            for s in family.samples if s.name == "hapax_requests_total"}


def _in_flight(metrics: GatewayMetrics, route: str = CHAT) -> float | None:
    return metrics.registry.get_sample_value("hapax_inflight_requests", {"department": "marketing", "route": route})


def _upstream_answer(status: int, provider: str | None, attempt: int | None = None, *,
                     content_type: str = "application/json", upstream_seconds: str | None = None) -> pb.HttpHeaders:
    """An answer's headers as they reach the router step: the upstream step's for it included."""
    fields = {":status": str(status), "content-type": content_type}
    if provider is not None:
        fields["x-hapax-provider"] = provider
    if attempt is not None:
        fields["x-hapax-attempt"] = str(attempt)
    if upstream_seconds is not None:
        fields["x-hapax-upstream-seconds"] = upstream_seconds
    return _headers(fields)


# ---------------------------------------------------------------- the chain


@pytest.mark.parametrize(("model", "chain", "retries"), [
    ("gpt-4o-mini", "chain.primary", "1"),
    ("fast", "chain.primary", "1"),  # an alias: its provider's chain
    ("claude", "chain.second", "2"),  # each chain's own attempts travel with the request
])
def test_a_known_model_goes_to_its_owners_chain_with_that_chains_attempts(step, model, chain, retries):
    before = time.time()
    common = _route_to(step, model)
    set_headers = _set(common.header_mutation)
    assert set_headers["x-hapax-chain"] == chain
    assert set_headers["x-envoy-max-retries"] == retries
    assert set_headers["x-hapax-version"] == "v7"
    assert before - 1 <= float(set_headers["x-hapax-start"]) <= time.time()
    assert common.clear_route_cache  # Envoy picks the route again, by the chain header


def test_the_client_credentials_never_go_on_nor_a_variant_the_client_claims(step):
    common = _route_to(step, "claude")
    assert set(common.header_mutation.remove_headers) == {*CREDENTIALS, "x-hapax-experiment", "x-hapax-variant"}
    assert not set(_set(common.header_mutation)) & set(CREDENTIALS)
    assert not common.HasField("body_mutation")  # the body is the upstream step's to rewrite


@pytest.mark.parametrize("model", ["auto", "", None])
def test_auto_or_no_model_takes_the_default_chain(step, model):
    set_headers = _set(_route_to(step, model).header_mutation)
    assert set_headers["x-hapax-chain"] == "chain.primary"
    assert set_headers["x-envoy-max-retries"] == "1"


def test_an_unknown_model_is_a_404_that_lists_the_models(step, metrics):
    with pytest.raises(GatewayError) as raised:
        _route_to(step, "gpt-5")
    err = raised.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "Available models: claude, fast, gpt-4o-mini (or 'auto')" in err.message
    step.on_error(err)
    assert _answered(metrics) == {("none", "none", "4xx", "client_error"): 1.0}


def test_an_unknown_path_is_a_404_and_counts_no_route(step, metrics):
    with pytest.raises(GatewayError) as raised:
        step.request_headers(_headers({":path": "/v1/nope?x=1"}), None)
    assert (raised.value.status, raised.value.code) == (404, "unknown_url")
    assert "/v1/nope." in raised.value.message  # the query is not part of the path
    step.on_error(raised.value)
    step.finish()
    assert _answered(metrics) == {}
    assert _in_flight(metrics) in (None, 0.0)


def test_an_empty_body_is_a_400(step):
    with pytest.raises(GatewayError) as raised:
        step.request_headers(_headers({":path": CHAT}, end_of_stream=True), None)
    assert (raised.value.status, raised.value.code) == (400, "invalid_json")


def test_the_model_list_is_answered_here_and_counted_as_a_success(step, view, metrics):
    response = step.request_headers(_headers({":path": MODELS}), None)
    answer = response.immediate_response
    assert answer.status.code == 200 and answer.body == view.models_json
    assert answer.details == "hapax_models"
    assert step.done
    assert _answered(metrics) == {("none", "none", "2xx", "success"): 1.0}
    assert _in_flight(metrics, MODELS) == 1.0
    step.finish()
    assert _in_flight(metrics, MODELS) == 0.0


# ---------------------------------------------------------------- the answer


def test_a_first_attempts_answer_is_a_success_and_the_steps_headers_go(step, metrics):
    _route_to(step, "gpt-4o-mini")
    assert _in_flight(metrics) == 1.0
    response = step.response_headers(_upstream_answer(200, "primary", 1, upstream_seconds="0.000001"), None)
    removed = response.response_headers.response.header_mutation.remove_headers
    assert set(removed) == {"x-hapax-provider", "x-hapax-attempt", "x-hapax-upstream-seconds"}
    assert step.done
    assert _answered(metrics) == {("primary", "gpt-4o-mini", "2xx", "success"): 1.0}
    overhead = metrics.registry.get_sample_value("hapax_gateway_overhead_seconds_count",
                                                 {"department": "marketing", "route": CHAT})
    assert overhead == 1.0  # the gateway's own time: the first attempt's answer only
    step.finish()
    assert _in_flight(metrics) == 0.0


def test_an_answer_at_the_second_attempt_is_a_failover(step, metrics):
    _route_to(step, "gpt-4o-mini")
    step.response_headers(_upstream_answer(200, "second", 2, upstream_seconds="0.5"), None)
    assert _answered(metrics) == {("second", "claude", "2xx", "failed_over"): 1.0}
    assert metrics.registry.get_sample_value(
        "hapax_failovers_total", {"department": "marketing", "route": CHAT, "provider": "second"}) == 1.0
    assert metrics.registry.get_sample_value(
        "hapax_gateway_overhead_seconds_count", {"department": "marketing", "route": CHAT}) in (None, 0.0)


@pytest.mark.parametrize("status", [401, 403])
def test_a_provider_refusing_the_gateways_key_is_counted_as_the_502_the_client_gets(step, metrics, status):
    _route_to(step, "gpt-4o-mini")
    step.response_headers(_upstream_answer(status, "primary", 1), None)
    assert _answered(metrics) == {("primary", "gpt-4o-mini", "5xx", "provider_error"): 1.0}


def test_a_providers_404_is_counted_as_the_502_the_client_gets(step, metrics):
    _route_to(step, "gpt-4o-mini")
    step.response_headers(_upstream_answer(404, "primary", 1), None)
    assert _answered(metrics) == {("primary", "gpt-4o-mini", "5xx", "provider_error"): 1.0}


def test_a_401_no_provider_gave_stays_a_client_error(step, metrics):
    _route_to(step, "gpt-4o-mini")
    step.response_headers(_upstream_answer(401, None), None)
    assert _answered(metrics) == {("none", "none", "4xx", "client_error"): 1.0}


def test_a_provider_error_after_the_last_attempt_is_a_provider_error(step, metrics):
    _route_to(step, "claude")
    step.response_headers(_upstream_answer(503, "primary", 3), None)
    assert _answered(metrics) == {("primary", "gpt-4o-mini", "5xx", "provider_error"): 1.0}


def test_a_request_is_counted_once(step, metrics):
    _route_to(step, "gpt-4o-mini")
    step.response_headers(_upstream_answer(200, "primary", 1), None)
    step.on_error(GatewayError(500, "late"))  # nothing after the answer's count counts again
    assert _answered(metrics) == {("primary", "gpt-4o-mini", "2xx", "success"): 1.0}


def test_a_stream_is_handed_over_to_the_upstream_step(step, metrics):
    _route_to(step, "gpt-4o-mini")
    response = step.response_headers(
        _upstream_answer(200, "primary", 1, content_type="text/event-stream; charset=utf-8"), None)
    assert "x-hapax-provider" in response.response_headers.response.header_mutation.remove_headers
    assert step.done and step.stream_goes_on
    step.finish()
    assert _answered(metrics) == {}  # the upstream step counts it when it ends...
    assert _in_flight(metrics) == 1.0  # ...and ends its in-flight count


def test_a_stream_that_failed_is_counted_here(step, metrics):
    _route_to(step, "gpt-4o-mini")
    step.response_headers(_upstream_answer(502, None, content_type="text/event-stream"), None)
    step.finish()
    assert _answered(metrics) == {("none", "none", "5xx", "provider_error"): 1.0}
    assert _in_flight(metrics) == 0.0


@pytest.mark.parametrize(("status", "outcome", "status_class"), [
    (400, "client_error", "4xx"), (413, "client_error", "4xx"), (503, "provider_error", "5xx")])
def test_an_error_the_gateway_answers_is_counted_by_its_status(step, metrics, status, outcome, status_class):
    step.request_headers(_headers({":path": CHAT}), None)
    step.on_error(GatewayError(status, "no"))
    step.finish()
    assert _answered(metrics) == {("none", "none", status_class, outcome): 1.0}
    assert _in_flight(metrics) == 0.0


def test_an_invalid_body_is_a_client_error(step, metrics):
    step.request_headers(_headers({":path": CHAT}), None)
    with pytest.raises(GatewayError) as raised:
        step.request_body(pb.HttpBody(body=b"{not json", end_of_stream=True), None)
    step.on_error(raised.value)
    assert raised.value.status == 400
    assert _answered(metrics) == {("none", "none", "4xx", "client_error"): 1.0}


# ---------------------------------------------------------------- a 503 that says why


def _unavailable_reply() -> pb.HttpHeaders:
    """Envoy's 503 provider_unavailable, as its mapper marks it for the router step."""
    return _headers({":status": "503", "content-type": "application/json", "x-hapax-unavailable": "1"})


def test_envoys_503_gets_the_reasons_of_the_requests_chain_only(view, metrics):
    asked: list[tuple[str, ...]] = []

    def reasons(names):
        asked.append(tuple(names))
        return {"second": "connection refused", "primary": "holding off for 38 s after a 429"}

    step = RouterStep(view, metrics, reasons)
    _route_to(step, "claude")
    common = step.response_headers(_unavailable_reply(), None).response_headers.response
    assert asked == [("second", "primary")]  # chain.second's providers, in the order tried
    assert common.status == pb.CommonResponse.CONTINUE_AND_REPLACE
    error = json.loads(common.body_mutation.body)["error"]
    assert error["code"] == "provider_unavailable"
    assert error["message"] == ("No provider could serve the request: second: connection refused; "
                                "primary: holding off for 38 s after a 429.")
    assert "x-hapax-unavailable" in common.header_mutation.remove_headers


def test_envoys_503_keeps_its_own_words_when_no_provider_has_a_known_problem(view, metrics):
    step = RouterStep(view, metrics, lambda names: {})
    _route_to(step, "auto")
    common = step.response_headers(_unavailable_reply(), None).response_headers.response
    assert common.status == pb.CommonResponse.CONTINUE and not common.HasField("body_mutation")
    assert "x-hapax-unavailable" in common.header_mutation.remove_headers


def test_an_ordinary_answer_is_never_rewritten_nor_are_reasons_looked_up(view, metrics):
    def reasons(names):
        raise AssertionError("looked up on the success path")

    step = RouterStep(view, metrics, reasons)
    _route_to(step, "auto")
    common = step.response_headers(_upstream_answer(200, "primary", 1), None).response_headers.response
    assert common.status == pb.CommonResponse.CONTINUE and not common.HasField("body_mutation")
