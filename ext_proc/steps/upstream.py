"""The upstream step, once per attempt: rewrites the request for its provider and reads the answer.

It runs in the chain cluster's upstream filters: it learns from the endpoint's
metadata which provider this attempt goes to and rewrites the request for it
(path, host, credentials, model, body), and the response if the provider does
not speak OpenAI or the client asked for another shape (the translators,
ext_proc/translators/).

A request Envoy routes from its body skips the router step: one naming a
known model (the model lane, control_plane/resources/model_lane.py) comes straight to
the upstream step; a passthrough-lane request reaches it only for an attempt
that leaves that lane.

Headers are an allow-list: each attempt removes every request header but what
every provider gets and what its provider's config forwards (``Provider.kept_headers``),
then sets its provider's own. Envoy hands every retry the request headers as the
previous attempt left them, so this also removes what another provider's attempt
set (credentials above all).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ext_proc import client_request
from ext_proc.admission import Admission
from ext_proc.client_request import ClientRequest
from ext_proc.errors import GatewayError, error_json
from ext_proc.experiments import Variant, requested_model
from ext_proc.inbound import count_tokens, shapes
from ext_proc.inbound.answer import ChainedStage
from ext_proc.inbound.shapes import answer_shape, canonical_handler
from ext_proc.ledger import Ledger, LedgerRecord, labels_json
from ext_proc.metrics import GatewayMetrics, token_count
from ext_proc.outcomes import RequestOutcome, StreamOutcome
from ext_proc.provider_health import retry_after_seconds
from ext_proc.runtime import Chain, Provider, RegionRouting, Route, RuntimeView, cost_usd
from ext_proc.steps.base import Step
from ext_proc.steps.messages import (
    BODY_AS_SENT,
    READ_WHOLE_RESPONSE,
    STREAM_AS_SENT,
    STREAM_RESPONSE,
    Attributes,
    BodyRead,
    attribute,
    body_read,
    continue_request_headers,
    continue_response_body,
    continue_response_headers,
    hapax_metadata,
    header_map,
    mutation,
    status_attribute,
    unavailable_json,
)
from ext_proc.translators import ProviderRequest, ResponseStage, translator_for
from hapax import wire
from hapax.wire import (
    ANSWER_ATTEMPT_HEADER,
    ATTEMPT_HEADER,
    CHAIN_HEADER,
    DROPPED_PARAMS_HEADER,
    FAMILY_OF_HANDLER,
    GATEWAY_ANSWER_HEADER,
    HOST_METADATA_ATTRIBUTE,
    NEVER_REMOVED_HEADERS,
    PROVIDER_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_METADATA_ATTRIBUTE,
    ROUTE_METADATA_ATTRIBUTE,
    START_HEADER,
    UPSTREAM_SECONDS_HEADER,
    VERSION_HEADER,
    Handler,
    Lane,
    RouteKey,
)

log = logging.getLogger("hapax.ext_proc")

# How an event stream's first piece begins (a field name of text/event-stream, or a comment).
SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt is, known once its request headers are read, and fixed from then on."""

    view: RuntimeView     # the runtime version its request started under
    provider: Provider    # where it goes (the endpoint's metadata)
    route: Route | None   # the client's route (None: not in this version)
    handler: str          # the client's API (a Handler, as the route's metadata names it)
    # The request's lane, if Envoy routed it from its body (no router step to
    # talk to): "passthrough" for one translated because it left that lane (the
    # access log counts it), "model" for the model lane (control_plane/resources/model_lane.py).
    lane: str
    number: int           # 1 for the first attempt
    request_id: str
    request_start: float  # wall clock: when the router step first saw the request
    key_id: str = ""  # the client key's id, when the gateway checks keys
    variant: Variant | None = None  # its experiment's variant, if it is in one

    @classmethod
    def read(cls, view: RuntimeView, provider: Provider, route_md: Mapping[str, str],
             headers: Mapping[str, str], started: float) -> Attempt:
        """``started``: the request's start if its headers do not say it."""
        number = headers.get(ATTEMPT_HEADER, "")
        route = view.routes.get(route_md.get(RouteKey.ROUTE, ""))
        key_id = headers.get(wire.KEY_ID_HEADER, "")
        variant = view.variant(headers.get(wire.EXPERIMENT_HEADER), headers.get(wire.VARIANT_HEADER))
        if route is not None:  # counted as its client's department's, and under its variant
            route = view.labelled(route, key_id, variant)
        return cls(view=view, provider=provider, route=route,
                   handler=route_md.get(RouteKey.HANDLER, ""), lane=route_md.get(RouteKey.LANE, ""),
                   number=int(number) if number.isdigit() else 1,
                   request_id=headers.get(REQUEST_ID_HEADER, ""),
                   request_start=_seconds(headers.get(START_HEADER, ""), started), key_id=key_id, variant=variant)

    def serving(self, req: ClientRequest) -> Attempt:
        """This attempt with its provider as it serves ``req``: with the model it is sent (``Provider.serving``)."""
        provider = self.provider.serving(FAMILY_OF_HANDLER[req.handler],
                                         requested_model(self.variant, self.provider.name, req.model))
        return self if provider is self.provider else replace(self, provider=provider)

    def target_headers(self, out: ProviderRequest) -> dict[str, str]:
        """Where this attempt goes, and its credentials."""
        return {":path": out.path, ":authority": self.provider.host, **out.set_headers}

    def native_headers(self) -> frozenset[str]:
        """The client's headers this attempt keeps beyond its provider's: its API's, when the provider
        speaks the route's API itself (every request on such a route has its body as sent)."""
        translator = translator_for(self.provider.type)
        return translator.native_headers if self.handler in translator.native else frozenset()

    def speaks_natively(self, req: ClientRequest) -> bool:
        """Whether this attempt's provider speaks the client's own API (Anthropic Messages, OpenAI Responses)."""
        return req.as_sent is not None and self.handler in translator_for(self.provider.type).native

    def provider_request(self, req: ClientRequest, native: bool) -> ProviderRequest:
        """``native``: ``speaks_natively(req)``. A translated request's dropped fields are its client API's
        (what the canonical chat left out) and its provider's (what the translator left out)."""
        translator = translator_for(self.provider.type)
        if native:
            assert req.as_sent is not None
            return translator.native_request(Handler(self.handler), req.as_sent, self.provider)
        if req.untranslatable:
            raise GatewayError(400, f"Provider '{self.provider.name}' ({self.provider.type}) cannot serve this "
                               f"request: {req.untranslatable}.", code="untranslatable_request")
        out = translator.request(req, self.provider)
        return replace(out, dropped=tuple(sorted({*out.dropped, *req.dropped}))) if req.dropped else out

    def response_stage(self, req: ClientRequest, native: bool = False) -> ResponseStage | None:
        if native:
            return translator_for(self.provider.type).native_response(Handler(self.handler), self.provider)
        stage = translator_for(self.provider.type).response(req, self.provider)
        shape = answer_shape(self.handler, req)  # the route's API's, when it is not the canonical one
        if shape is None:
            return stage
        return shape if stage is None else ChainedStage(stage, shape)


class UpstreamStep(Step):
    """Once per attempt: rewrites the request for the provider it goes to, and reads the answer.

    Counts what only an attempt knows: retries, token usage and cost, a
    stream's timing, and (since it alone sees a stream end) a streamed answer.
    """

    def __init__(self, view: RuntimeView, metrics: GatewayMetrics | None = None,
                 hold_off: Callable[[str, float, int], None] | None = None,
                 view_for: Callable[[str], RuntimeView | None] = lambda _: None,
                 reasons: Callable[[Iterable[str]], Mapping[str, str]] | None = None,
                 admission: Admission | None = None, ledger: Ledger | None = None) -> None:
        super().__init__()
        self.admission = admission  # settles a delivered stream's reservation
        self.ledger = ledger  # and writes its ledger record
        self.view = view  # the current version: for a request whose own version is gone
        self.view_for = view_for
        self.reasons = reasons  # why providers are out of rotation (ProviderProber.unavailable_reasons)
        self.metrics = metrics
        self.hold_off = hold_off
        self.created = time.time()  # the request's start, for a request whose headers do not say it
        self.attempt: Attempt | None = None  # once its request headers are read
        # What the step learns as the answer goes by.
        self.stage: ResponseStage | None = None
        self.dropped: tuple[str, ...] = ()  # the client's fields this attempt's provider was not sent
        self.sent = 0.0  # monotonic: the rewritten request left for the provider
        self.streaming = False  # the client is receiving this attempt's stream
        self.first_chunk: float | None = None  # wall clock
        self.usage_counted = False
        self.in_flight = False  # this attempt holds its request's in-flight count
        # A stream sent as it is: its answer's headers reach the client without the step.
        self.headers_unread = False
        self.answer_status = 0
        # The headers of the client's own API it sent and a native request keeps as they are.
        self.clients_own: frozenset[str] = frozenset()

    # ---------------------------------------------------------------- the request

    def request_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
        # Every attempt of a request uses the version the request started under,
        # even if a newer one (without this attempt's provider) has arrived since.
        headers = header_map(msg)  # one pass over the headers, not one per header read
        view = self.view_for(headers.get(VERSION_HEADER, "")) or self.view
        host = hapax_metadata(attribute(attributes, HOST_METADATA_ATTRIBUTE))  # parsed once: it is text
        route_md = hapax_metadata(attribute(attributes, ROUTE_METADATA_ATTRIBUTE))
        # What Envoy read of the body: only a model-lane request needs it (parsed: it is text too).
        body = body_read(attribute(attributes, REQUEST_METADATA_ATTRIBUTE)) \
            if route_md.get(RouteKey.LANE) == Lane.MODEL else BodyRead()
        if host.get(wire.HOST_UNAVAILABLE_KEY):
            return self._unavailable(view, headers, route_md, body)
        provider = _provider(view, host.get(wire.HOST_PROVIDER_KEY, ""))
        self.attempt = attempt = Attempt.read(view, provider, route_md, headers, self.created)
        self._count_attempt(attempt)
        if canonical_handler(attempt.handler) not in translator_for(provider.type).handlers:
            raise GatewayError(400, f"Provider '{provider.name}' ({provider.type}) does not serve "
                               f"the '{attempt.handler}' API.", code="unsupported_handler")
        as_sent = self._body_as_sent(attempt, body, headers)
        native_headers = attempt.native_headers()
        self.clients_own = frozenset(name for name in headers if name in native_headers)
        # A body to rewrite comes next: this attempt's own headers are set with it.
        return as_sent or continue_request_headers(pb.CommonResponse(
            header_mutation=mutation(remove=not_kept(headers, provider.kept_headers | native_headers))))

    def _unavailable(self, view: RuntimeView, headers: Mapping[str, str],
                     route_md: Mapping[str, str], read: BodyRead) -> pb.ProcessingResponse:
        """No provider of the request's chain is in rotation, and Envoy sent the attempt to the
        chain's last member (clusters.py: unavailable_cluster): 503 naming each provider's reason.

        This is how a request Envoy routes from its body (the lanes, no router step) learns why.
        The answer is the gateway's, and Envoy's to retry (to the same member) or give the client.
        """
        self.done = True
        variant = view.variant(headers.get(wire.EXPERIMENT_HEADER), headers.get(wire.VARIANT_HEADER))
        cluster = variant.chain if variant is not None else headers.get(CHAIN_HEADER, "")
        chain = _request_chain(view, cluster, headers, route_md, read)
        names = chain.providers if chain is not None else tuple(view.providers)
        pinned = RegionRouting.pinned_region(view.region_view(headers, route_md.get("department")))
        body = unavailable_json(self.reasons(names) if self.reasons is not None else {}, pinned) or json.dumps(
            error_json("No provider could serve the request (none is in rotation).", "server_error",
                       "provider_unavailable")).encode()
        return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=503),
            headers=mutation({"content-type": "application/json"}),
            body=body, details=f"{wire.GATEWAY_DETAILS_PREFIX}provider_unavailable"))

    def _count_attempt(self, attempt: Attempt) -> None:
        if self.metrics is None or attempt.route is None or attempt.lane == Lane.PASSTHROUGH:
            return
        if attempt.number > 1:
            self.metrics.retried(attempt.route, attempt.provider)
        if attempt.lane == Lane.MODEL:  # no router step counts it in flight
            self.metrics.request_started(attempt.route)
            self.in_flight = True

    def _body_as_sent(self, attempt: Attempt, body: BodyRead,
                      headers: Mapping[str, str]) -> pb.ProcessingResponse | None:
        """On the model lane, what Envoy read of the body may show the provider takes it as it is:
        then only the path and headers change, and the body is not sent here."""
        if (attempt.lane != Lane.MODEL or not body.model or body.stream is None
                or canonical_handler(attempt.handler) != attempt.handler):  # an experiment's Messages or Responses
            return None
        req = ClientRequest.as_read(Handler(attempt.handler), body.model, body.stream, body.include_usage)
        attempt = self.attempt = attempt.serving(req)
        out = translator_for(attempt.provider.type).request_as_sent(req, attempt.provider)
        if out is None:
            return None
        self.stage = attempt.response_stage(req)
        self.sent = time.monotonic()
        self.headers_unread = req.stream
        set_headers = attempt.target_headers(out)
        remove = not_kept(headers, attempt.provider.kept_headers, set_headers)
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=pb.CommonResponse(
                header_mutation=mutation(set_headers, remove=remove))),
            mode_override=STREAM_AS_SENT if req.stream else BODY_AS_SENT)

    def request_body(self, msg: pb.HttpBody, attributes: Attributes) -> pb.ProcessingResponse:
        attempt = self.attempt
        assert attempt is not None
        # Parsed again per attempt: the router step's result cannot travel
        # through Envoy cheaper than the JSON itself.
        req = client_request.parse(attempt.handler, msg.body)
        attempt = self.attempt = attempt.serving(req)
        native = attempt.speaks_natively(req)
        if req.handler == Handler.COUNT_TOKENS and not native:
            return self._estimated_count(req)
        out = attempt.provider_request(req, native)
        assert out.body is not None  # a translated request always has a body
        self.stage = attempt.response_stage(req, native)
        self.dropped = out.dropped
        set_headers = {**{name: value for name, value in attempt.target_headers(out).items()
                          if name not in self.clients_own},  # a native request's version and betas: the client's
                       "content-type": "application/json", "content-length": str(len(out.body))}
        common = pb.CommonResponse(header_mutation=mutation(set_headers))  # the rest went with the headers
        common.body_mutation.body = out.body
        self.sent = time.monotonic()
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))

    def _estimated_count(self, req: ClientRequest) -> pb.ProcessingResponse:
        """A token count this attempt's provider cannot make (it is not Anthropic's): the gateway's estimate,
        as Anthropic's answer, saying it is one."""
        self.done = True
        body = json.dumps({"input_tokens": count_tokens.estimate(req.body)}).encode()
        return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=200),
            headers=mutation({"content-type": "application/json",
                              wire.TOKEN_COUNT_HEADER: wire.TOKEN_COUNT_ESTIMATED}),
            body=body, details=f"{wire.GATEWAY_DETAILS_PREFIX}estimated_token_count"))

    # ---------------------------------------------------------------- the answer

    def response_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
        attempt = self.attempt
        assert attempt is not None
        headers = header_map(msg)
        status = self.answer_status = int(headers.get(":status", "0") or 0)
        self._log_provider_error(status)
        self._honour_retry_after(status, headers.get("retry-after", ""))
        if GATEWAY_ANSWER_HEADER in headers:
            # Envoy's own answer on the way to the provider (its timeout): already
            # OpenAI error JSON, not the provider's to convert.
            self.stage = None
        # For the router step, which counts the request once its answer is final (none on a lane).
        set_headers = {} if attempt.lane else {
            PROVIDER_HEADER: attempt.provider.name, ANSWER_ATTEMPT_HEADER: str(attempt.number),
            UPSTREAM_SECONDS_HEADER: f"{time.monotonic() - self.sent:.6f}" if self.sent else "0"}
        if self.stage is not None:
            set_headers.update(self.stage.headers(status, headers.get("content-type", "")))
        if self.dropped:  # on every lane, JSON or stream: the client is told what its provider was not sent
            set_headers[DROPPED_PARAMS_HEADER] = ", ".join(self.dropped)
        # On a lane, Envoy reads a JSON answer's usage itself (json_to_metadata; the access log counts it).
        if (self.stage is None or not self.stage.reads_body
                or (attempt.lane and self.stage.reads_json_only_for_usage)):
            self.done = True
            return continue_response_headers(pb.CommonResponse(header_mutation=mutation(set_headers)))
        # The body is rewritten: its length is set once known (JSON) or left to chunking (streams).
        self.streaming = self.stage.streams
        if self.streaming and not attempt.lane:
            self.in_flight = True  # the router step hands a stream's in-flight count over (it cannot see it end)
        return pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(response=pb.CommonResponse(
                header_mutation=mutation(set_headers, remove=("content-length",)))),
            mode_override=STREAM_RESPONSE if self.streaming else READ_WHOLE_RESPONSE)

    def response_body(self, msg: pb.HttpBody, attributes: Attributes) -> pb.ProcessingResponse:
        common = pb.CommonResponse()
        if self.headers_unread:
            # The status comes with the first message; what the answer is, with its first bytes.
            self.answer_status = self.answer_status or status_attribute(attributes)
            if not (msg.body or msg.end_of_stream):
                return continue_response_body(common)
            self._answer_began(self.answer_status, msg.body)
        if self.stage is not None:
            if self.first_chunk is None and msg.body:
                self.first_chunk = time.time()
            out = self.stage.body(msg.body, msg.end_of_stream)
            if out != msg.body:  # else Envoy passes on the piece it holds, without a copy
                common.body_mutation.body = out
            if msg.end_of_stream and not self.stage.streams:
                set_headers = {"content-length": str(len(out))}
                if self.stage.status_override:
                    set_headers[":status"] = str(self.stage.status_override)
                common.header_mutation.CopyFrom(mutation(set_headers))
            if msg.end_of_stream:
                self._count_usage()
        if msg.end_of_stream:
            self.done = True
        return continue_response_body(common)

    def _answer_began(self, status: int, first_piece: bytes) -> None:
        """What the response headers tell the step, for a stream whose headers it did not read.

        Only an event stream is read as one; any other answer passes as it is (a JSON
        answer or an error: the access log counts it, as any other answer on the lane).
        """
        assert self.stage is not None
        self.headers_unread = False
        self._log_provider_error(status)
        events = 200 <= status < 300 and first_piece.lstrip().startswith(SSE_FIELDS)
        self.stage.headers(status, "text/event-stream" if events else "application/json")
        self.streaming = self.stage.streams
        if not self.streaming:
            self.stage = None

    def _log_provider_error(self, status: int) -> None:
        if status >= 500 or status == 429:
            attempt = self.attempt
            assert attempt is not None
            log.warning("provider answered with an error; Envoy retries elsewhere if an attempt is left", extra={
                "request_id": attempt.request_id, "provider": attempt.provider.name, "status": status,
                "attempt": attempt.number})

    def _honour_retry_after(self, status: int, retry_after: str) -> None:
        # A provider that says when to come back is not sent traffic before then
        # (the next attempt of this request has already moved to the next provider).
        if status not in (429, 503) or not retry_after or self.hold_off is None or self.attempt is None:
            return
        seconds = retry_after_seconds(retry_after)
        if seconds:
            self.hold_off(self.attempt.provider.name, seconds, status)

    # ---------------------------------------------------------------- the end

    def error_body(self, err: GatewayError) -> bytes:
        return shapes.error_body(self.attempt.handler if self.attempt is not None else "", err)

    def on_error(self, err: GatewayError) -> None:
        # Counted where the answer's end is seen: by the router step, or the access log on a lane.
        attempt = self.attempt
        log.info("attempt answered by the gateway", extra={
            "request_id": attempt.request_id if attempt else "",
            "provider": attempt.provider.name if attempt else None,
            "status": err.status, "code": err.code or err.type})

    def finish(self) -> None:
        """The attempt's ext_proc call is over: a stream is counted by how it ended.

        A stream's usage too, if its end-of-stream message never came: a client that has read
        the last event may close before Envoy sends ext_proc the (empty) end of the stream, and
        Envoy then resets the call. Under load that lost a completed stream's tokens and cost.
        """
        if self.streaming:
            self._count_usage()
        self._count_stream_end()
        route = self.attempt.route if self.attempt is not None else None
        if self.in_flight and self.metrics is not None and route is not None:
            self.in_flight = False
            self.metrics.request_ended(route)

    def _count_stream_end(self) -> None:
        attempt = self.attempt
        if not self.streaming or self.metrics is None or attempt is None:
            return
        self.streaming = False
        stream_outcome = (self.stage.stream_outcome if self.stage is not None else None) or StreamOutcome.INTERRUPTED
        self.metrics.stream_ended(attempt.provider.name, stream_outcome)
        if stream_outcome != StreamOutcome.COMPLETED:
            log.warning("a stream ended before the provider's end of stream", extra={
                "request_id": attempt.request_id, "provider": attempt.provider.name, "outcome": stream_outcome})
        if attempt.route is None:
            return
        if stream_outcome == StreamOutcome.COMPLETED:
            outcome = RequestOutcome.answered(attempt.number)
        else:
            outcome = RequestOutcome.STREAM_ABORTED
        self.metrics.request_answered(attempt.route, attempt.provider, 200, outcome,
                                      time.time() - attempt.request_start)
        self._write_ledger(attempt, outcome, stream_outcome == StreamOutcome.COMPLETED)

    def _write_ledger(self, attempt: Attempt, outcome: RequestOutcome, completed: bool) -> None:
        """A delivered stream's one ledger record (the access log writes every other request's)."""
        if self.ledger is None or attempt.route is None:
            return
        usage = (self.stage.usage if self.stage is not None and completed else None) or {}
        inputs, outputs = token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens"))
        details = usage.get(wire.PROMPT_DETAILS)
        cached = token_count(details.get(wire.CACHED_TOKENS)) if isinstance(details, dict) else None
        client = attempt.view.client(attempt.key_id)
        self.ledger.record(LedgerRecord(
            time=attempt.request_start, request_id=attempt.request_id, route=attempt.route.path,
            labels=labels_json(attempt.route.labels), key_id=attempt.key_id,
            client=client.name if client is not None else "", provider=attempt.provider.name,
            model=attempt.provider.model, input_tokens=inputs, output_tokens=outputs, cached_tokens=cached,
            cost_usd=cost_usd(attempt.provider.price, inputs, outputs), price_version=attempt.view.version,
            status=200, outcome=outcome.value, experiment=attempt.variant.experiment if attempt.variant else "",
            variant=attempt.variant.name if attempt.variant else "", region=attempt.provider.region))

    def _count_usage(self) -> None:
        """Once per attempt: at the answer's end, or when the call ends first (finish)."""
        attempt = self.attempt
        if (self.usage_counted or self.metrics is None or attempt is None or attempt.route is None
                or self.stage is None):
            return
        self.usage_counted = True
        if attempt.lane and not self.streaming:
            return  # the access log counts the tokens Envoy read from the answer
        if not self._answered():
            return  # an error, or a stream cut short: no answer whose usage could be missing
        usage = self.stage.usage or {}  # counts it lacks are unknown, not 0 (metrics.tokens_counted)
        self.metrics.tokens_used(attempt.route, attempt.provider, usage,
                                 has_output=attempt.handler != Handler.EMBEDDINGS)
        if self.streaming and self.admission is not None:  # the access log settles every other answer
            self.admission.settle_later(attempt.view, attempt.request_id, attempt.provider,
                                        token_count(usage.get("prompt_tokens")),
                                        token_count(usage.get("completion_tokens")))
        if self.streaming and self.first_chunk is not None:
            ended = time.time()
            output = usage.get("completion_tokens")
            per_token = (ended - self.first_chunk) / (output - 1) if isinstance(output, int) and output > 1 else None
            self.metrics.stream_timing(attempt.route, attempt.provider, self.first_chunk - attempt.request_start,
                                       per_token)

    def _answered(self) -> bool:
        """The provider gave a whole answer (a 2xx read whole, or a stream to its end): one with a usage."""
        stage = self.stage
        assert stage is not None
        if not 200 <= self.answer_status < 300 or stage.status_override:
            return False
        return not self.streaming or stage.stream_outcome == StreamOutcome.COMPLETED


def _request_chain(view: RuntimeView, cluster: str, headers: Mapping[str, str], route_md: Mapping[str, str],
                   body: BodyRead) -> Chain | None:
    """The chain named (by the router step, or an experiment's variant), or a model-lane request's: its
    model and route's handler (with regions, in the request's region, as Envoy's lookup picked it)."""
    if cluster:
        return view.chains.get(cluster)
    handler, model = route_md.get(RouteKey.HANDLER, ""), body.model
    if handler not in FAMILY_OF_HANDLER or not model:
        return None
    region_view = view.region_view(headers, route_md.get("department"))
    return view.chain_in(region_view, FAMILY_OF_HANDLER[Handler(handler)], model)


def _provider(view: RuntimeView, name: str) -> Provider:
    provider = view.providers.get(name)
    if provider is None:
        raise GatewayError(502, f"The gateway routed to an unknown provider endpoint ({name or 'no metadata'}); "
                           "its configuration may be changing.", type="server_error", code="unknown_provider")
    return provider


def not_kept(names: Iterable[str], kept: frozenset[str], set_now: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The request headers (``names``, lowercase) an attempt removes: every one but ``kept``.

    What the client sent, what the steps told each other (``x-hapax-*``), Envoy's own
    (``x-envoy-*``, ``x-forwarded-*``) and what another provider's attempt set all go;
    pseudo-headers and the host stay (Envoy sets them for the provider, and forbids
    removing them), and so do the ones this attempt sets (``set_now``).
    """
    return tuple(name for name in names
                 if name not in kept and not name.startswith(":") and name not in NEVER_REMOVED_HEADERS
                 and not (set_now and name in set_now))


def _seconds(text: str, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default
