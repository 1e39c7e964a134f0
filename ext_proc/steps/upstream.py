"""The upstream step, once per attempt: rewrites the request for its provider and reads the answer.

It runs in the chain cluster's upstream filters: it learns from the endpoint's
metadata which provider this attempt goes to and rewrites the request for it
(path, host, credentials, model, body), and the response if the provider does
not speak OpenAI or the client asked for another shape (the translators,
ext_proc/translators/).

A request Envoy routes from its body skips the router step: one naming a
known model (the model lane, control_plane/model_lane.py) comes straight to
the upstream step; a passthrough-lane request reaches it only for an attempt
that leaves that lane.

Envoy hands every retry the request headers as the previous attempt's upstream
step left them, so each attempt starts by removing whatever another provider's
attempt may have set (credentials above all) before setting its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc import client_request
from ext_proc.client_request import ClientRequest
from ext_proc.errors import GatewayError
from ext_proc.metrics import GatewayMetrics
from ext_proc.outcomes import RequestOutcome, StreamOutcome
from ext_proc.provider_health import retry_after_seconds
from ext_proc.runtime import Provider, Route, RuntimeView
from ext_proc.steps.base import Step
from ext_proc.steps.messages import (
    BODY_AS_SENT,
    READ_WHOLE_RESPONSE,
    STREAM_AS_SENT,
    STREAM_RESPONSE,
    Attributes,
    attribute,
    continue_request_headers,
    continue_response_body,
    continue_response_headers,
    hapax_metadata,
    header_map,
    mutation,
    provider_from_host_metadata,
    status_attribute,
)
from ext_proc.translators import PROVIDER_HEADERS, ProviderRequest, ResponseStage, translator_for
from ext_proc.translators.completions import ChainedStage, TextCompletionStage
from hapax.wire import (
    ANSWER_ATTEMPT_HEADER,
    ATTEMPT_HEADER,
    HOST_METADATA_ATTRIBUTE,
    PROVIDER_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_METADATA_ATTRIBUTE,
    START_HEADER,
    STEP_REQUEST_HEADERS,
    UPSTREAM_SECONDS_HEADER,
    USAGE_HEADER,
    VERSION_HEADER,
    Handler,
    Lane,
    RouteKey,
)

log = logging.getLogger("hapax.ext_proc")

# How an event stream's first piece begins (a field name of text/event-stream, or a comment).
SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


class UpstreamStep(Step):
    """Once per attempt: rewrites the request for the provider it goes to, and reads the answer.

    Counts what only an attempt knows: retries, token usage and cost, a
    stream's timing, and (since it alone sees a stream end) a streamed answer.
    """

    def __init__(self, view: RuntimeView, metrics: GatewayMetrics | None = None,
                 hold_off: Callable[[str, float], None] | None = None,
                 view_for: Callable[[str], RuntimeView | None] = lambda _: None) -> None:
        super().__init__()
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
        # The request's lane, if Envoy routed it from its body (no router step to
        # talk to): "passthrough" for one translated because it left that lane (the
        # access log counts it), "model" for the model lane (control_plane/model_lane.py).
        self.lane = ""
        self.in_flight = False  # this attempt holds its request's in-flight count
        # A stream sent as it is: its answer's headers reach the client without the step.
        self.headers_unread = False
        self.answer_status = 0

    def request_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
        # Every attempt of a request uses the version the request started under,
        # even if a newer one (without this attempt's provider) has arrived since.
        headers = header_map(msg)  # one pass over the headers, not one per header read
        self.view = self.view_for(headers.get(VERSION_HEADER, "")) or self.view
        self.provider = self._provider(attributes)
        route_md = hapax_metadata(attribute(attributes, ROUTE_METADATA_ATTRIBUTE))
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
        return self._body_as_sent(route_md, headers.get(USAGE_HEADER) == "true") or continue_request_headers()

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

    def request_body(self, msg: pb.HttpBody, attributes: Attributes) -> pb.ProcessingResponse:
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

    def response_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
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
            return continue_response_headers(pb.CommonResponse(header_mutation=mutation(set_headers)))
        # The body is rewritten: its length is set once known (JSON) or left to chunking (streams).
        self.streaming = self.stage.streams
        if self.streaming and not self.lane:
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

    def _provider(self, attributes: Attributes) -> Provider:
        name = provider_from_host_metadata(attribute(attributes, HOST_METADATA_ATTRIBUTE))
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


def _stale_headers(set_headers: dict[str, str]) -> tuple[str, ...]:
    """What the steps told each other, and another provider's attempt set, that this attempt does not set."""
    return tuple(h for h in (ATTEMPT_HEADER, *STEP_REQUEST_HEADERS, *PROVIDER_HEADERS) if h not in set_headers)
