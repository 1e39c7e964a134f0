"""The Envoy External Processing service: the router step and the upstream step.

Envoy calls it twice per request, on separate gRPC streams told apart by the
``x-hapax-phase`` initial metadata:

- router (once per request, HTTP connection manager): validates the client
  request, answers what needs no provider (``/v1/models``, client errors), picks
  the provider chain (an aggregate cluster) and names it in ``x-hapax-chain``.
- upstream (once per attempt, in the chain cluster): learns from the endpoint's
  metadata which provider this attempt goes to and rewrites the request for it
  (path, host, credentials, model, body), and the response if the provider does
  not speak OpenAI or the client asked for another shape.

A request Envoy routes from its body skips the router step: one naming a
known model (the model lane, control_plane/model_lane.py) comes straight to
the upstream step; a passthrough-lane request reaches it only for an attempt
that leaves that lane.

Nothing is shared between the two steps but what Envoy carries: the chain
header and the route's metadata (its handler), so the steps may land on
different ext_proc processes.

Envoy hands every retry the request headers as the previous attempt's upstream
step left them, so each attempt starts by removing whatever another provider's
attempt may have set (credentials above all) before setting its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import lru_cache

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2, text_format

from ext_proc import client_request
from ext_proc.client_request import AUTO_MODELS, ClientRequest
from ext_proc.errors import GatewayError, invalid
from ext_proc.metrics import GatewayMetrics
from ext_proc.outcomes import RequestOutcome, StreamOutcome, outcome_for
from ext_proc.provider_health import retry_after_seconds
from ext_proc.translators import (
    PROVIDER_HEADERS,
    ProviderRequest,
    ResponseStage,
    translator_for,
)
from ext_proc.runtime import Chain, Provider, Route, RuntimeView
from ext_proc.translators.completions import ChainedStage, TextCompletionStage
from hapax import wire
from hapax.wire import (
    ANSWER_ATTEMPT_HEADER,
    ATTEMPT_HEADER,
    CHAIN_HEADER,
    CLIENT_CREDENTIAL_HEADERS,
    EXT_PROC_ATTRIBUTES,
    HOST_METADATA_ATTRIBUTE,
    PROVIDER_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_METADATA_ATTRIBUTE,
    START_HEADER,
    STEP_REQUEST_HEADERS,
    STEP_RESPONSE_HEADERS,
    UPSTREAM_SECONDS_HEADER,
    USAGE_HEADER,
    VERSION_HEADER,
    Handler,
    Lane,
    Phase,
    RouteKey,
)

log = logging.getLogger("hapax.ext_proc")

# Provider answers that mean the gateway's key was refused; the client gets a 502.
CREDENTIAL_REJECTED = (401, 403)
# How an event stream's first piece begins (a field name of text/event-stream, or a comment).
SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")

PM = processing_mode_pb2.ProcessingMode
# Every attempt's response headers reach the upstream step (status, retry-after);
# its body only when a response stage must read it: a stream piece by piece, a
# JSON answer whole (its headers then wait for the converted body, so the
# status can still change: a 200 whose body is unusable becomes a 502).
STREAM_RESPONSE = PM(
    request_header_mode=PM.SEND, request_body_mode=PM.BUFFERED,
    response_header_mode=PM.SEND, response_body_mode=PM.STREAMED,
    request_trailer_mode=PM.SKIP, response_trailer_mode=PM.SKIP,
)
# A request body the provider takes as it is (ProviderRequest.body None) is not sent.
BODY_AS_SENT = PM(
    request_header_mode=PM.SEND, request_body_mode=PM.NONE,
    response_header_mode=PM.SEND, response_body_mode=PM.NONE,
    request_trailer_mode=PM.SKIP, response_trailer_mode=PM.SKIP,
)
# The same for a stream, whose answer's headers then go to the client unread:
# the step learns the status from the first piece (response.code), and the
# first chunk waits on one ext_proc round trip fewer.
STREAM_AS_SENT = PM(
    request_header_mode=PM.SEND, request_body_mode=PM.NONE,
    response_header_mode=PM.SKIP, response_body_mode=PM.STREAMED,
    request_trailer_mode=PM.SKIP, response_trailer_mode=PM.SKIP,
)
READ_WHOLE_RESPONSE = PM(
    request_header_mode=PM.SEND, request_body_mode=PM.BUFFERED,
    response_header_mode=PM.SEND, response_body_mode=PM.BUFFERED,
    request_trailer_mode=PM.SKIP, response_trailer_mode=PM.SKIP,
)


# ---------------------------------------------------------------- protobuf helpers


def header_map(headers: pb.HttpHeaders) -> dict[str, str]:
    return {h.key: (h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
            for h in headers.headers.headers}


def _set(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def mutation(set_headers: dict[str, str] | None = None, remove: tuple[str, ...] = ()) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[_set(k, v) for k, v in (set_headers or {}).items()],
        remove_headers=list(remove),
    )


def immediate(status: int, body: bytes, details: str, content_type: str = "application/json") -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=mutation({"content-type": content_type}),
            body=body,
            details=details,
        )
    )


def error_response(err: GatewayError) -> pb.ProcessingResponse:
    return immediate(err.status, err.body(), f"{wire.GATEWAY_DETAILS_PREFIX}{err.code or err.type}")


def _stale_headers(set_headers: dict[str, str]) -> tuple[str, ...]:
    """What the steps told each other, and another provider's attempt set, that this attempt does not set."""
    return tuple(h for h in (ATTEMPT_HEADER, *STEP_REQUEST_HEADERS, *PROVIDER_HEADERS) if h not in set_headers)


def _continue_headers(common: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common or pb.CommonResponse()))


@lru_cache(maxsize=1024)
def hapax_metadata(text: str) -> dict[str, str]:
    """The gateway's namespace of an Envoy metadata attribute (text-format proto)."""
    if not text:
        return {}
    md = base_pb2.Metadata()
    text_format.Parse(text, md)
    ns = md.filter_metadata.get(wire.METADATA_NAMESPACE)
    return {} if ns is None else {k: v.string_value for k, v in ns.fields.items()}


def provider_from_host_metadata(text: str) -> str:
    return hapax_metadata(text).get(wire.HOST_PROVIDER_KEY, "")


def _attribute_value(attributes, name: str) -> struct_pb2.Value | None:
    if not attributes or EXT_PROC_ATTRIBUTES not in attributes:
        return None
    fields = attributes[EXT_PROC_ATTRIBUTES].fields
    return fields.get(name)


def _attribute(attributes, name: str) -> str:
    value = _attribute_value(attributes, name)
    return value.string_value if value is not None else ""


def _status_attribute(attributes) -> int:
    """The answer's status (``response.code``, sent with the first message of the answer)."""
    value = _attribute_value(attributes, wire.STATUS_ATTRIBUTE)
    return int(value.number_value) if value is not None else 0


# ---------------------------------------------------------------- router step


class RouterStep:
    """Once per request: validates it, picks its chain, and counts it when its answer starts.

    Every final answer passes here (after Envoy's retries, Envoy's own replies
    included), except that a successful stream is counted by the upstream step
    that watched it end.
    """

    def __init__(self, view: RuntimeView, metrics: GatewayMetrics | None = None) -> None:
        self.view = view
        self.metrics = metrics
        self.handler = ""
        self.route: Route | None = None
        self.started = time.monotonic()
        self.counted = False
        self.request_id = ""
        self.done = False  # nothing more to do: the stream can end (see Processor.Process)
        self.stream_goes_on = False  # a stream's end (and its in-flight count) is the upstream step's

    def on_headers(self, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        headers = header_map(msg)
        self.request_id = headers.get(REQUEST_ID_HEADER, "")
        path = headers.get(":path", "").split("?", 1)[0]
        route = self.view.routes.get(path)
        if route is None:
            raise GatewayError(404, f"Unknown request URL: {path}.", code="unknown_url")
        self.route, self.handler = route, route.handler
        if self.metrics is not None:
            self.metrics.request_started(route)
        if route.handler == Handler.MODELS:
            self._count(200, None, RequestOutcome.SUCCESS)
            self.done = True
            return immediate(200, self.view.models_json, f"{wire.GATEWAY_DETAILS_PREFIX}models")
        if msg.end_of_stream:
            raise invalid("The request body is empty; expected a JSON object.", code="invalid_json")
        return _continue_headers()

    def on_body(self, msg: pb.HttpBody) -> pb.ProcessingResponse:
        req = client_request.parse(self.handler, msg.body)
        chain = self.chain_for(req)
        # The route's retry policy is shared by all chains, so the request's own
        # chain's attempts travel with it.
        retries = chain.attempts - 1
        set_headers = {CHAIN_HEADER: chain.cluster, wire.MAX_RETRIES_HEADER: str(retries), VERSION_HEADER: self.view.version,
                       START_HEADER: f"{time.time() - (time.monotonic() - self.started):.6f}"}
        # The body itself is left alone here: the upstream step rewrites it for
        # the provider anyway. (A multi-MB body mutation at this step crashed
        # Envoy 1.40 with SIGSEGV; see tests/test_gateway_e2e.py.)
        common = pb.CommonResponse(clear_route_cache=True)
        common.header_mutation.CopyFrom(mutation(set_headers, remove=CLIENT_CREDENTIAL_HEADERS))
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))

    def on_response_headers(self, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        headers = header_map(msg)
        common = pb.CommonResponse(header_mutation=mutation(remove=STEP_RESPONSE_HEADERS))
        response = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))
        status = int(headers.get(":status", "0") or 0)
        provider = self.view.providers.get(headers.get(PROVIDER_HEADER, ""))
        self.done = True
        if 200 <= status < 300 and headers.get("content-type", "").startswith("text/event-stream"):
            self.stream_goes_on = True
            return response  # the upstream step counts it when it ends
        attempt = int(headers.get(ANSWER_ATTEMPT_HEADER, "1") or 1)
        if status in CREDENTIAL_REJECTED and provider is not None:
            status = 502  # what the client gets (custom_response)
        outcome = outcome_for(status, attempt)
        overhead = None
        upstream = headers.get(UPSTREAM_SECONDS_HEADER)
        if attempt == 1 and upstream:
            overhead = time.monotonic() - self.started - float(upstream)
        self._count(status, provider, outcome, overhead)
        return response

    def on_error(self, err: GatewayError) -> None:
        log.info("request answered by the gateway", extra={
            "request_id": self.request_id, "status": err.status, "code": err.code or err.type})
        if self.route is not None:
            outcome = RequestOutcome.CLIENT_ERROR if err.status < 500 else RequestOutcome.PROVIDER_ERROR
            self._count(err.status, None, outcome)

    def finish(self) -> None:
        if self.route is not None and self.metrics is not None and not self.stream_goes_on:
            self.metrics.request_ended(self.route)

    def _count(self, status: int, provider: Provider | None, outcome: RequestOutcome, overhead: float | None = None) -> None:
        if self.metrics is None or self.route is None or self.counted:
            return
        self.counted = True
        self.metrics.request_answered(self.route, provider, status, outcome,
                                      time.monotonic() - self.started, overhead)

    def chain_for(self, req: ClientRequest) -> Chain:
        if req.model is None or req.model in AUTO_MODELS:
            return self.view.default_chain
        chain = self.view.chain_for_model.get(req.model)
        if chain is None:
            known = ", ".join(sorted(self.view.chain_for_model)) or "none"
            raise GatewayError(404, f"The model '{req.model}' does not exist on this gateway. "
                               f"Available models: {known} (or 'auto').",
                               param="model", code="model_not_found")
        return chain



# ---------------------------------------------------------------- upstream step


class UpstreamStep:
    """Once per attempt: rewrites the request for the provider it goes to, and reads the answer.

    Counts what only an attempt knows: retries, token usage and cost, a
    stream's timing, and (since it alone sees a stream end) a streamed answer.
    """

    def __init__(self, view: RuntimeView, metrics: GatewayMetrics | None = None,
                 hold_off: Callable[[str, float], None] | None = None,
                 view_for: Callable[[str], RuntimeView | None] = lambda _: None) -> None:
        self.view = view
        self.view_for = view_for
        self.metrics = metrics
        self.hold_off = hold_off
        self.provider: Provider | None = None
        self.route: Route | None = None
        self.handler = ""
        self.attempt = 1
        self.stage: ResponseStage | None = None
        self.streaming = False  # the client is receiving this attempt's stream
        self.request_start = time.time()  # when the router step first saw the request
        self.sent = 0.0  # monotonic: the rewritten request left for the provider
        self.first_chunk: float | None = None  # wall clock
        self.request_id = ""
        self.done = False  # nothing more to do: the stream can end (see Processor.Process)
        # The request's lane, if Envoy routed it from its body (no router step to
        # talk to): "passthrough" for one translated because it left that lane (the
        # access log counts it), "model" for the model lane (control_plane/model_lane.py).
        self.lane = ""
        self.in_flight = False  # this attempt holds its request's in-flight count
        # A stream sent as it is: its answer's headers reach the client without the step.
        self.headers_unread = False
        self.answer_status = 0

    def on_headers(self, msg: pb.HttpHeaders, attributes) -> pb.ProcessingResponse:
        # Every attempt of a request uses the version the request started under,
        # even if a newer one (without this attempt's provider) has arrived since.
        headers = header_map(msg)  # one pass over the headers, not one per header read
        self.view = self.view_for(headers.get(VERSION_HEADER, "")) or self.view
        self.provider = self._provider(attributes)
        route_md = hapax_metadata(_attribute(attributes, ROUTE_METADATA_ATTRIBUTE))
        self.handler = route_md.get(RouteKey.HANDLER, "")
        self.route = self.view.routes.get(route_md.get(RouteKey.ROUTE, ""))
        self.lane = route_md.get(RouteKey.LANE, "")
        attempt = headers.get(ATTEMPT_HEADER, "")
        self.attempt = int(attempt) if attempt.isdigit() else 1
        self.request_id = headers.get(REQUEST_ID_HEADER, "")
        start = headers.get(START_HEADER, "")
        try:
            self.request_start = float(start) if start else self.request_start
        except ValueError:
            pass
        if self.metrics is not None and self.route is not None and self.lane != Lane.PASSTHROUGH:
            if self.attempt > 1:
                self.metrics.retried(self.route, self.provider)
            if self.lane == Lane.MODEL:  # no router step counts it in flight
                self.metrics.request_started(self.route)
                self.in_flight = True
        translator = translator_for(self.provider.type)
        if self.handler not in translator.handlers:
            raise GatewayError(400, f"Provider '{self.provider.name}' ({self.provider.type}) does not serve "
                               f"the '{self.handler}' API.", code="unsupported_handler")
        return self._body_as_sent(route_md, headers.get(USAGE_HEADER) == "true") or _continue_headers()

    def _body_as_sent(self, route_md: dict, include_usage: bool) -> pb.ProcessingResponse | None:
        """On the model lane, what Envoy read of the body may show the provider takes it as it is:
        then only the path and headers change, and the body is not sent here."""
        model, stream = route_md.get(RouteKey.MODEL), route_md.get(RouteKey.STREAM)
        if self.lane != Lane.MODEL or not model or stream not in ("true", "false"):
            return None
        assert self.provider is not None
        req = ClientRequest.as_read(Handler(self.handler), model, stream == "true", include_usage)
        out = translator_for(self.provider.type).request_as_sent(req, self.provider)
        if out is None:
            return None
        self.stage = self._response_stage(req)
        self.sent = time.monotonic()
        self.headers_unread = req.stream
        set_headers = self._target_headers(out)
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=pb.CommonResponse(
                header_mutation=mutation(set_headers, remove=_stale_headers(set_headers)))),
            mode_override=STREAM_AS_SENT if req.stream else BODY_AS_SENT)

    def on_body(self, msg: pb.HttpBody) -> pb.ProcessingResponse:
        assert self.provider is not None
        # Parsed again per attempt: the router step's result cannot travel
        # through Envoy cheaper than the JSON itself.
        req = client_request.parse(self.handler, msg.body)
        translator = translator_for(self.provider.type)
        out = translator.request(req, self.provider)
        self.stage = self._response_stage(req)
        set_headers = {**self._target_headers(out),
                       "content-type": "application/json", "content-length": str(len(out.body))}
        common = pb.CommonResponse(header_mutation=mutation(set_headers, remove=_stale_headers(set_headers)))
        common.body_mutation.body = out.body
        self.sent = time.monotonic()
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))

    def _target_headers(self, out: ProviderRequest) -> dict[str, str]:
        """Where this attempt goes, and its credentials."""
        assert self.provider is not None
        return {":path": out.path, ":authority": self.provider.host, **out.set_headers}

    def on_response_headers(self, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        assert self.provider is not None
        headers = header_map(msg)
        status = int(headers.get(":status", "0") or 0)
        self._log_provider_error(status)
        self._honour_retry_after(status, headers.get("retry-after", ""))
        # For the router step, which counts the request once its answer is final (none on a lane).
        set_headers = {} if self.lane else {
            PROVIDER_HEADER: self.provider.name, ANSWER_ATTEMPT_HEADER: str(self.attempt),
            UPSTREAM_SECONDS_HEADER: f"{time.monotonic() - self.sent:.6f}" if self.sent else "0"}
        if self.stage is not None:
            set_headers.update(self.stage.headers(status, headers.get("content-type", "")))
        # On a lane, Envoy reads a JSON answer's usage itself (json_to_metadata; the access log counts it).
        if self.stage is None or not self.stage.reads_body or (self.lane and self.stage.reads_json_only_for_usage):
            self.done = True
            return pb.ProcessingResponse(response_headers=pb.HeadersResponse(
                response=pb.CommonResponse(header_mutation=mutation(set_headers))))
        # The body is rewritten: its length is set once known (JSON) or left to chunking (streams).
        self.streaming = self.stage.streams
        if self.streaming and not self.lane:
            self.in_flight = True  # the router step hands a stream's in-flight count over (it cannot see it end)
        return pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(response=pb.CommonResponse(
                header_mutation=mutation(set_headers, remove=("content-length",)))),
            mode_override=STREAM_RESPONSE if self.streaming else READ_WHOLE_RESPONSE)

    def on_response_body(self, msg: pb.HttpBody, attributes=None) -> pb.ProcessingResponse:
        common = pb.CommonResponse()
        if self.headers_unread:
            # The status comes with the first message; what the answer is, with its first bytes.
            self.answer_status = self.answer_status or _status_attribute(attributes)
            if not (msg.body or msg.end_of_stream):
                return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))
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
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))

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
            assert self.provider is not None
            log.warning("provider answered with an error; Envoy retries elsewhere if an attempt is left", extra={
                "request_id": self.request_id, "provider": self.provider.name, "status": status,
                "attempt": self.attempt})

    def on_error(self, err: GatewayError) -> None:
        # Counted where the answer's end is seen: by the router step, or the access log on a lane.
        log.info("attempt answered by the gateway", extra={
            "request_id": self.request_id, "provider": self.provider.name if self.provider else None,
            "status": err.status, "code": err.code or err.type})

    def finish(self) -> None:
        """The attempt's ext_proc call is over: a stream is counted by how it ended."""
        self._count_stream_end()
        if self.in_flight and self.metrics is not None and self.route is not None:
            self.in_flight = False
            self.metrics.request_ended(self.route)

    def _count_stream_end(self) -> None:
        if not self.streaming or self.metrics is None or self.provider is None:
            return
        self.streaming = False
        stream_outcome = (self.stage.stream_outcome if self.stage is not None else None) or StreamOutcome.INTERRUPTED
        self.metrics.stream_ended(self.provider.name, stream_outcome)
        if stream_outcome != StreamOutcome.COMPLETED:
            log.warning("a stream ended before the provider's end of stream", extra={
                "request_id": self.request_id, "provider": self.provider.name, "outcome": stream_outcome})
        if self.route is None:
            return
        if stream_outcome == StreamOutcome.COMPLETED:
            outcome = RequestOutcome.answered(self.attempt)
        else:
            outcome = RequestOutcome.STREAM_ABORTED
        self.metrics.request_answered(self.route, self.provider, 200, outcome, time.time() - self.request_start)

    def _count_usage(self) -> None:
        if self.metrics is None or self.route is None or self.provider is None or self.stage is None:
            return
        if self.lane and not self.streaming:
            return  # the access log counts the tokens Envoy read from the answer
        usage = self.stage.usage
        if usage is None:
            return
        self.metrics.tokens_used(self.route, self.provider, usage)
        if self.streaming and self.first_chunk is not None:
            ended = time.time()
            output = usage.get("completion_tokens")
            per_token = (ended - self.first_chunk) / (output - 1) if isinstance(output, int) and output > 1 else None
            self.metrics.stream_timing(self.route, self.provider, self.first_chunk - self.request_start, per_token)

    def _honour_retry_after(self, status: int, retry_after: str) -> None:
        # A provider that says when to come back is not sent traffic before then
        # (the next attempt of this request has already moved to the next provider).
        if status not in (429, 503) or not retry_after or self.hold_off is None or self.provider is None:
            return
        seconds = retry_after_seconds(retry_after)
        if seconds:
            self.hold_off(self.provider.name, seconds)

    def _provider(self, attributes) -> Provider:
        name = provider_from_host_metadata(_attribute(attributes, HOST_METADATA_ATTRIBUTE))
        provider = self.view.providers.get(name)
        if provider is None:
            raise GatewayError(502, f"The gateway routed to an unknown provider endpoint ({name or 'no metadata'}); "
                               "its configuration may be changing.", type="server_error", code="unknown_provider")
        return provider

    def _response_stage(self, req: ClientRequest) -> ResponseStage | None:
        assert self.provider is not None
        stage = translator_for(self.provider.type).response(req, self.provider)
        if req.handler != Handler.COMPLETION:
            return stage
        shape = TextCompletionStage()
        return shape if stage is None else ChainedStage(stage, shape)


# ---------------------------------------------------------------- service


class Processor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, current_view: Callable[[], RuntimeView | None],
                 metrics: GatewayMetrics | None = None,
                 hold_off: Callable[[str, float], None] | None = None,
                 view_for: Callable[[str], RuntimeView | None] = lambda _: None) -> None:
        self.current_view = current_view
        self.metrics = metrics
        self.hold_off = hold_off
        self.view_for = view_for

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest], context):
        phase = dict(context.invocation_metadata()).get(wire.PHASE_METADATA, Phase.ROUTER)
        view = self.current_view()
        step: RouterStep | UpstreamStep | None = None
        if view is not None:
            step = (RouterStep(view, self.metrics) if phase == Phase.ROUTER
                    else UpstreamStep(view, self.metrics, self.hold_off, self.view_for))
        try:
            async for request in request_iterator:
                if step is None:
                    yield error_response(GatewayError(
                        503, "The gateway has not received its configuration yet; retry shortly.",
                        type="server_error", code="not_configured"))
                    return
                try:
                    response = self._dispatch(step, request)
                except GatewayError as err:
                    step.on_error(err)
                    yield error_response(err)
                    return
                except Exception:
                    log.exception("ext_proc failed on a request", extra={"phase": phase})
                    yield error_response(GatewayError(500, "The gateway failed to process the request.",
                                                      type="server_error", code="internal_error"))
                    return
                yield response
                if step.done:
                    # Ended by us, not reset by Envoy when the HTTP stream goes: Envoy then
                    # sends nothing more (ext_proc's onGrpcClose), and grpc.aio keeps memory
                    # for every call its client cancels (measured: ~130 B per call).
                    return
        finally:
            if step is not None:
                step.finish()

    @staticmethod
    def _dispatch(step: RouterStep | UpstreamStep, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            if isinstance(step, UpstreamStep):
                return step.on_headers(request.request_headers, request.attributes)
            return step.on_headers(request.request_headers)
        if kind == "request_body":
            return step.on_body(request.request_body)
        if kind == "response_headers":
            return step.on_response_headers(request.response_headers)
        if kind == "response_body" and isinstance(step, UpstreamStep):
            return step.on_response_body(request.response_body, request.attributes)
        return _passthrough(kind)


def _passthrough(kind: str | None) -> pb.ProcessingResponse:
    empty = pb.CommonResponse()
    if kind == "response_headers":
        return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=empty))
    if kind == "response_body":
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=empty))
    if kind == "request_trailers":
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    if kind == "response_trailers":
        return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
    return _continue_headers()
