"""The one interface of ext_proc's steps: a method per message Envoy sends, each passing by default.

As in Envoy AI Gateway's ``Processor`` interface (ProcessRequestHeaders/Body,
ProcessResponseHeaders/Body), the service (ext_proc/service.py) calls the same
four methods, with the same arguments, on whichever step a gRPC stream is for;
a step overrides the messages it acts on and lets the others pass unchanged.
"""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.errors import GatewayError
from ext_proc.steps.messages import (
    Attributes,
    continue_request_body,
    continue_request_headers,
    continue_response_body,
    continue_response_headers,
)


class Step:
    """One ext_proc gRPC stream: what Envoy sends of one request (router) or one attempt (upstream)."""

    def __init__(self) -> None:
        self.done = False  # nothing more to do: the stream can end (see service.Processor.Process)

    def request_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
        return continue_request_headers()

    def request_body(self, msg: pb.HttpBody, attributes: Attributes) -> pb.ProcessingResponse:
        return continue_request_body()

    def response_headers(self, msg: pb.HttpHeaders, attributes: Attributes) -> pb.ProcessingResponse:
        return continue_response_headers()

    def response_body(self, msg: pb.HttpBody, attributes: Attributes) -> pb.ProcessingResponse:
        return continue_response_body()

    def error_body(self, err: GatewayError) -> bytes:
        """``err`` as the client's API words an error (an Anthropic client gets Anthropic's shape)."""
        return err.body()

    def on_error(self, err: GatewayError) -> None:
        """The gateway answers ``err`` itself: the stream ends with that answer."""

    def finish(self) -> None:
        """The stream is over, ended by the step or by Envoy."""
