"""The Envoy External Processing service: hands each message of a gRPC stream to its step.

Envoy calls it twice per request, on separate gRPC streams told apart by the
``x-hapax-phase`` initial metadata: the router step once per request, in the
HTTP connection manager (ext_proc/steps/router.py), and the upstream step once
per attempt, in the chain cluster (ext_proc/steps/upstream.py). Both are
``Step``s (ext_proc/steps/base.py): the service calls the same four methods on
either, and turns what a step raises into the answer Envoy sends the client.

Nothing is shared between the two steps but what Envoy carries: the chain
header and the route's metadata (its handler), so the steps may land on
different ext_proc processes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.admission import Admission
from ext_proc.coalescing import Coalescer
from ext_proc.errors import GatewayError
from ext_proc.ledger import Ledger
from ext_proc.metrics import GatewayMetrics
from ext_proc.runtime import RuntimeView
from ext_proc.steps.base import Step
from ext_proc.steps.messages import continue_request_headers, error_response
from ext_proc.steps.router import RouterStep
from ext_proc.steps.upstream import UpstreamStep
from hapax import wire
from hapax.wire import Phase

log = logging.getLogger("hapax.ext_proc")


class Processor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, current_view: Callable[[], RuntimeView | None],
                 metrics: GatewayMetrics | None = None,
                 hold_off: Callable[[str, float, int], None] | None = None,
                 view_for: Callable[[str], RuntimeView | None] = lambda _: None,
                 reasons: Callable[[Iterable[str]], Mapping[str, str]] | None = None,
                 admission: Admission | None = None, coalescer: Coalescer | None = None,
                 ledger: Ledger | None = None) -> None:
        self.ledger = ledger
        self.current_view = current_view
        self.admission = admission
        self.coalescer = coalescer
        self.metrics = metrics
        self.hold_off = hold_off
        self.view_for = view_for
        self.reasons = reasons

    def step_for(self, phase: str) -> Step | None:
        """A new step for a stream of ``phase``; None before the first runtime arrives."""
        view = self.current_view()
        if view is None:
            return None
        if phase == Phase.ROUTER:
            return RouterStep(view, self.metrics, self.reasons, self.coalescer)
        return UpstreamStep(view, self.metrics, self.hold_off, self.view_for, self.reasons, self.admission,
                            self.ledger)

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        phase = dict(context.invocation_metadata()).get(wire.PHASE_METADATA, Phase.ROUTER)
        step = self.step_for(phase)
        try:
            async for request in request_iterator:
                if step is None:
                    yield error_response(GatewayError(
                        503, "The gateway has not received its configuration yet; retry shortly.",
                        type="server_error", code="not_configured"))
                    return
                try:
                    response = dispatch(step, request)
                except GatewayError as err:
                    step.on_error(err)
                    yield error_response(err, step.error_body(err))
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


def dispatch(step: Step, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
    """The step's answer to one message (trailers, which the steps never ask for, pass)."""
    kind = request.WhichOneof("request")
    if kind == "request_headers":
        return step.request_headers(request.request_headers, request.attributes)
    if kind == "request_body":
        return step.request_body(request.request_body, request.attributes)
    if kind == "response_headers":
        return step.response_headers(request.response_headers, request.attributes)
    if kind == "response_body":
        return step.response_body(request.response_body, request.attributes)
    if kind == "request_trailers":
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    if kind == "response_trailers":
        return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
    return continue_request_headers()
