"""The router step, once per request: validates it, picks its chain, and counts its answer.

It runs in the HTTP connection manager, before Envoy's router: it answers what
needs no provider (``/v1/models``, client errors), picks the provider chain
(an aggregate cluster) and names it in ``x-hapax-chain``. Every final answer
passes back through it (after Envoy's retries, Envoy's own replies included),
and it counts the request then, except that a successful stream is counted by
the upstream step that watched it end.

A request Envoy routes from its body skips this step (see ext_proc/steps/upstream.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc import client_request
from ext_proc.client_request import AUTO_MODELS, ClientRequest
from ext_proc.coalescing import LOST_LEADER, Coalescer, Flight, coalescing_key, determined
from ext_proc.errors import GatewayError, invalid
from ext_proc.experiments import Variant, requested_model
from ext_proc.inbound import shapes
from ext_proc.metrics import GatewayMetrics
from ext_proc.outcomes import RequestOutcome, outcome_for
from ext_proc.runtime import Chain, Provider, RegionRouting, Route, RuntimeView
from ext_proc.steps.base import Step
from ext_proc.steps.messages import (
    Attributes,
    continue_request_body,
    continue_request_headers,
    continue_response_body,
    continue_response_headers,
    header_map,
    immediate,
    mutation,
    unavailable_json,
)
from hapax import wire
from hapax.wire import (
    ANSWER_ATTEMPT_HEADER,
    CHAIN_HEADER,
    CLIENT_CREDENTIAL_HEADERS,
    PROVIDER_HEADER,
    REQUEST_ID_HEADER,
    START_HEADER,
    STEP_RESPONSE_HEADERS,
    UNAVAILABLE_HEADER,
    UPSTREAM_SECONDS_HEADER,
    VERSION_HEADER,
    Handler,
)

log = logging.getLogger("hapax.ext_proc")

# A leader's answer after its headers: every piece through the router step, as it passes.
FOLLOWED_RESPONSE = processing_mode_pb2.ProcessingMode(
    request_header_mode=processing_mode_pb2.ProcessingMode.SEND,
    request_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED,
    response_header_mode=processing_mode_pb2.ProcessingMode.SEND,
    response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED)

# Provider answers that mean the gateway's configuration is wrong (its key refused, its base_url
# or model unknown); the client gets a 502 (control_plane/resources/listeners.py: provider_errors_filter).
GATEWAY_CONFIG_REJECTED = (401, 403, 404)

# Why each provider may not be serving, for the providers named (ProviderProber.unavailable_reasons).
Reasons = Callable[[Iterable[str]], Mapping[str, str]]


class RouterStep(Step):
    """Once per request: validates it, picks its chain, and counts it when its answer starts."""

    def __init__(self, view: RuntimeView, metrics: GatewayMetrics | None = None,
                 reasons: Reasons | None = None, coalescer: Coalescer | None = None) -> None:
        super().__init__()
        self.coalescer = coalescer
        self.flight: Flight | None = None  # the answer this request leads, on a route with dedup
        self.flight_key = ""
        self.following = False  # it shares an identical request's answer
        self.key_id = ""
        self.view = view
        self.metrics = metrics
        self.reasons = reasons
        self.handler = ""
        self.route: Route | None = None
        self.chain: Chain | None = None
        self.started = time.monotonic()
        self.counted = False
        self.request_id = ""
        self.stream_goes_on = False  # a stream's end (and its in-flight count) is the upstream step's
        self.request: ClientRequest | None = None  # once its body is read
        self.headers: Mapping[str, str] = {}
        self.variant: Variant | None = None  # its experiment's variant, if it is in one
        self.region_view: str | None = None  # with regions: the view its chain comes from (None: home)

    def request_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
        headers = self.headers = header_map(msg)
        self.request_id = headers.get(REQUEST_ID_HEADER, "")
        path = headers.get(":path", "").split("?", 1)[0]
        route = self.view.routes.get(path)
        if route is None:
            raise GatewayError(404, f"Unknown request URL: {path}.", code="unknown_url")
        self.key_id = headers.get(wire.KEY_ID_HEADER, "")
        self.region_view = self.view.region_view(headers, route.labels.get("department"))
        route = self.view.labelled(route, self.key_id)  # its client's labels
        self.route, self.handler = route, route.handler
        if self.metrics is not None:
            self.metrics.request_started(route)
        if route.handler == Handler.MODELS:
            self._count(200, None, RequestOutcome.SUCCESS)
            self.done = True
            return immediate(200, self.view.models_json, f"{wire.GATEWAY_DETAILS_PREFIX}models")
        if msg.end_of_stream:
            raise invalid("The request body is empty; expected a JSON object.", code="invalid_json")
        return continue_request_headers()

    def request_body(self, msg: pb.HttpBody, attributes: Attributes) -> pb.ProcessingResponse:
        req = self.request = client_request.parse(self.handler, msg.body)
        variant = self._assign_variant(req)
        chain = self.chain = self.view.chains[variant.chain] if variant is not None else self.chain_for(req)
        # The route's retry policy is shared by all chains, so the request's own
        # chain's attempts travel with it.
        retries = chain.attempts - 1
        set_headers = {CHAIN_HEADER: chain.cluster, wire.MAX_RETRIES_HEADER: str(retries),
                       VERSION_HEADER: self.view.version,
                       START_HEADER: f"{time.time() - (time.monotonic() - self.started):.6f}",
                       **self._variant_headers()}
        set_headers.update(self._coalesce(req))
        # The body itself is left alone here: the upstream step rewrites it for
        # the provider anyway. (A multi-MB body mutation at this step crashed
        # Envoy 1.40 with SIGSEGV; see tests/e2e/test_gateway_e2e.py.)
        common = pb.CommonResponse(clear_route_cache=True)
        remove = (*CLIENT_CREDENTIAL_HEADERS, *(() if variant else (wire.EXPERIMENT_HEADER, wire.VARIANT_HEADER)))
        common.header_mutation.CopyFrom(mutation(set_headers, remove=remove))
        return continue_request_body(common)

    def _assign_variant(self, req: ClientRequest) -> Variant | None:
        """Its experiment's variant, assigned as Envoy assigns the requests it routes
        (ext_proc/experiments.py); its series move to the variant's labels."""
        route = self.route
        assert route is not None
        experiment = self.view.experiment_for(route.path, req.model)
        # A pinned department's requests are in no experiment: a variant's chain would leave its region
        # (Envoy's experiment routes leave them out alike: control_plane/resources/experiments.py).
        if experiment is None or RegionRouting.pinned_region(self.region_view) is not None:
            return None
        variant = self.variant = experiment.assign(self.headers)
        self.route = self.view.labelled(self.view.routes.get(route.path, route), self.key_id, variant)
        if self.metrics is not None:  # its in-flight count too: whoever sees its end counts it there
            self.metrics.request_ended(route)
            self.metrics.request_started(self.route)
        return variant

    def _variant_headers(self) -> dict[str, str]:
        """For the upstream step (the variant's model) and the client (which variant served it)."""
        variant = self.variant
        return {} if variant is None else {wire.EXPERIMENT_HEADER: variant.experiment,
                                           wire.VARIANT_HEADER: variant.name}

    def _coalesce(self, req: ClientRequest) -> dict[str, str]:
        """On a route with ``dedup``: lead an identical request's flight, or follow the one in flight
        (then the request goes to this worker's HTTP side, which writes the leader's answer)."""
        route = self.route
        if self.coalescer is None or route is None or route.dedup == "off":
            return {}
        if route.dedup != "always" and not determined(req.body):
            return {}
        client = self.view.client(self.key_id)
        # Identical requests on different variants get different answers: a variant is part of the scope.
        scope = "\0".join([client.name if client is not None else "", *(self.variant.labels.values()
                                                                         if self.variant else ())])
        self.flight_key = coalescing_key(scope, route.path, req.body)
        flight, leading = self.coalescer.join(self.flight_key)
        if leading:
            self.flight = flight
            return {}
        self.following = True
        return {CHAIN_HEADER: wire.FIRST_WORKER_HTTP_CLUSTER, wire.MAX_RETRIES_HEADER: "0",
                wire.COALESCE_HEADER: flight.id}

    def chain_for(self, req: ClientRequest) -> Chain:
        """The chain of the request's model among its family's (``auto``: the family's preference order)."""
        family = wire.FAMILY_OF_HANDLER[req.handler]
        model = None if req.model is None or req.model in AUTO_MODELS else req.model
        chain = self.view.chain_in(self.region_view, family, model)  # with regions, the request's region's
        if chain is not None:
            return chain
        if model is None:
            raise GatewayError(404, f"No provider of this gateway serves {family} requests.",
                               param="model", code="model_not_found")
        other = next((f for f, models in self.view.family_models.items() if model in models), None)
        if other is not None:
            raise invalid(f"The model '{model}' is a{'n' if other[0] in 'aeiou' else ''} {other} model: "
                          f"it does not serve {family} requests.", param="model", code="model_not_supported")
        known = ", ".join(sorted(self.view.family_models.get(family, self.view.chain_for_model))) or "none"
        raise GatewayError(404, f"The model '{model}' does not exist on this gateway. "
                           f"Available models: {known} (or 'auto').", param="model", code="model_not_found")

    def response_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
        headers = header_map(msg)
        response = continue_response_headers(pb.CommonResponse(
            header_mutation=mutation(self._variant_headers(), remove=STEP_RESPONSE_HEADERS)))
        if UNAVAILABLE_HEADER in headers:
            response = self.unavailable()
        status = int(headers.get(":status", "0") or 0)
        provider = self.view.providers.get(headers.get(PROVIDER_HEADER, ""))
        if provider is not None and self.request is not None:  # as the upstream step sent it: with its model
            provider = provider.serving(wire.FAMILY_OF_HANDLER[self.request.handler],
                                        requested_model(self.variant, provider.name, self.request.model))
        self.done = True
        if self.following:  # its answer is the leader's: counted here, streams too, as coalesced
            self._count(status, provider, RequestOutcome.COALESCED if status < 400 else outcome_for(status, 1))
            return response
        if self.flight is not None:
            self.flight.answer_started(status, headers)
            if msg.end_of_stream:  # an answer without a body: nothing more to pass on
                self._land()
            else:
                self.done = False  # its answer's pieces come here too, for its followers
                response.mode_override.CopyFrom(FOLLOWED_RESPONSE)
        if 200 <= status < 300 and headers.get("content-type", "").startswith("text/event-stream"):
            self.stream_goes_on = True
            return response  # the upstream step counts it when it ends
        attempt = int(headers.get(ANSWER_ATTEMPT_HEADER, "1") or 1)
        if status in GATEWAY_CONFIG_REJECTED and provider is not None:
            status = 502  # what the client gets (custom_response)
        overhead = None
        upstream = headers.get(UPSTREAM_SECONDS_HEADER)
        if attempt == 1 and upstream:
            overhead = time.monotonic() - self.started - float(upstream)
        self._count(status, provider, outcome_for(status, attempt), overhead)
        return response

    def response_body(self, msg: pb.HttpBody, attributes: Attributes) -> pb.ProcessingResponse:
        """A leader's answer, piece by piece, on its way to the client and to its followers."""
        if self.flight is not None:
            self.flight.add(msg.body)
            if msg.end_of_stream:
                self._land()
        return continue_response_body()

    def _land(self) -> None:
        if self.flight is not None and self.coalescer is not None:
            self.flight.end()
            self.coalescer.landed(self.flight_key, self.flight)
            self.done = True

    def unavailable(self) -> pb.ProcessingResponse:
        """Envoy's 503 provider_unavailable (listeners.py: _unavailable_to_router_step), with the reasons.

        Envoy knows only that no provider was in rotation or answered; ext_proc knows why
        (its probes, the retry-afters it saw). The reasons are short fixed words and numbers
        (provider_health.describe_failure): never a key, never a provider's body.
        """
        remove = (*STEP_RESPONSE_HEADERS, UNAVAILABLE_HEADER)
        providers = self.chain.providers if self.chain is not None else self.view.providers
        body = unavailable_json(self.reasons(providers) if self.reasons is not None else {},
                                RegionRouting.pinned_region(self.region_view))
        if body is not None:
            body = shapes.reshaped_error(self.handler, 503, body)
        if body is None:  # every provider passes its probes: Envoy's own words are all there is
            return continue_response_headers(pb.CommonResponse(
                header_mutation=mutation(self._variant_headers(), remove=remove)))
        return continue_response_headers(pb.CommonResponse(
            status=pb.CommonResponse.CONTINUE_AND_REPLACE,
            header_mutation=mutation(self._variant_headers(), remove=remove),
            body_mutation=pb.BodyMutation(body=body)))

    def error_body(self, err: GatewayError) -> bytes:
        return shapes.error_body(self.handler, err)

    def on_error(self, err: GatewayError) -> None:
        if self.flight is not None:
            self.flight.fail(err.status, err.body())
            self._land()
        log.info("request answered by the gateway", extra={
            "request_id": self.request_id, "status": err.status, "code": err.code or err.type})
        if self.route is not None:
            outcome = RequestOutcome.CLIENT_ERROR if err.status < 500 else RequestOutcome.PROVIDER_ERROR
            self._count(err.status, None, outcome)

    def finish(self) -> None:
        if self.flight is not None and not self.flight.ended:  # gone before its answer's end
            self.flight.fail(502, LOST_LEADER)
            self._land()
        if self.route is not None and self.metrics is not None and not self.stream_goes_on:
            self.metrics.request_ended(self.route)

    def _count(self, status: int, provider: Provider | None, outcome: RequestOutcome,
               overhead: float | None = None) -> None:
        if self.metrics is None or self.route is None or self.counted:
            return
        self.counted = True
        self.metrics.request_answered(self.route, provider, status, outcome,
                                      time.monotonic() - self.started, overhead)
