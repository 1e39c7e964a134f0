"""The ext_proc protocol's messages: reading what Envoy sends, building what the steps answer.

Protobuf helpers only, shared by the steps and the service; no step's logic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2, text_format

from ext_proc.errors import GatewayError, error_json
from hapax import wire
from hapax.wire import EXT_PROC_ATTRIBUTES

# A message's request attributes (``ProcessingRequest.attributes``), None when there are none.
Attributes = Mapping[str, struct_pb2.Struct] | None


# ---------------------------------------------------------------- processing modes

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


# ---------------------------------------------------------------- headers


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


# ---------------------------------------------------------------- answers


def continue_request_headers(common: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common or pb.CommonResponse()))


def continue_request_body(common: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common or pb.CommonResponse()))


def continue_response_headers(common: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common or pb.CommonResponse()))


def continue_response_body(common: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common or pb.CommonResponse()))


def immediate(status: int, body: bytes, details: str, content_type: str = "application/json") -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=mutation({"content-type": content_type}),
            body=body,
            details=details,
        )
    )


def unavailable_json(reasons: Mapping[str, str], pinned_region: str | None = None) -> bytes | None:
    """503 provider_unavailable naming each provider's reason; None when no provider has one.
    ``pinned_region``: the region the request's department may not leave (regions.residency).

    The reasons are short fixed words and numbers (provider_health: ProviderHealth.reason):
    never a key, never a provider's body.
    """
    if not reasons:
        return None
    said = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    where = "" if pinned_region is None else (
        f" in region {pinned_region}, which this request's department may not leave (data residency),")
    return json.dumps(error_json(f"No provider{where} could serve the request: {said}.", "server_error",
                                 "provider_unavailable")).encode()


def error_response(err: GatewayError, body: bytes | None = None) -> pb.ProcessingResponse:
    """``body``: the error in the route's API's shape (Step.error_body); OpenAI's by default."""
    return immediate(err.status, err.body() if body is None else body,
                     f"{wire.GATEWAY_DETAILS_PREFIX}{err.code or err.type}")


# ---------------------------------------------------------------- attributes


@lru_cache(maxsize=1024)
def hapax_metadata(text: str) -> dict[str, str]:
    """The gateway's namespace of an Envoy metadata attribute (text-format proto)."""
    if not text:
        return {}
    md = base_pb2.Metadata()
    text_format.Parse(text, md)
    ns = md.filter_metadata.get(wire.METADATA_NAMESPACE)
    return {} if ns is None else {k: v.string_value for k, v in ns.fields.items()}


@dataclass(frozen=True)
class BodyRead:
    """What Envoy's json_to_metadata read of a request's body (wire.REQUEST_NAMESPACE)."""

    model: str | None = None  # a string, or nothing usable
    stream: bool | None = None  # a boolean (absent: false), or nothing usable
    include_usage: bool = False


@lru_cache(maxsize=1024)  # one text per model, stream and usage flag: parsed once (text format is slow)
def body_read(text: str) -> BodyRead:
    """The request's dynamic metadata attribute (text-format proto), as far as the body goes."""
    if not text:
        return BodyRead()
    md = base_pb2.Metadata()
    text_format.Parse(text, md)
    ns = md.filter_metadata.get(wire.REQUEST_NAMESPACE)
    if ns is None:
        return BodyRead()
    fields = ns.fields

    def typed(key: str, kind: str):
        value = fields.get(key)
        return getattr(value, kind) if value is not None and value.WhichOneof("kind") == kind else None

    return BodyRead(typed(wire.BODY_MODEL, "string_value"), typed(wire.BODY_STREAM, "bool_value"),
                    typed(wire.BODY_INCLUDE_USAGE, "bool_value") is True)


def _attribute_value(attributes: Attributes, name: str) -> struct_pb2.Value | None:
    if not attributes or EXT_PROC_ATTRIBUTES not in attributes:
        return None
    fields = attributes[EXT_PROC_ATTRIBUTES].fields
    return fields.get(name)


def attribute(attributes: Attributes, name: str) -> str:
    value = _attribute_value(attributes, name)
    return value.string_value if value is not None else ""


def status_attribute(attributes: Attributes) -> int:
    """The answer's status (``response.code``, sent with the first message of the answer)."""
    value = _attribute_value(attributes, wire.STATUS_ATTRIBUTE)
    return int(value.number_value) if value is not None else 0
