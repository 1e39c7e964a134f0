"""The stream lane: streams Envoy routes from the body, without the router step.

A stream's time to its first byte is a row of ext_proc round trips, each about
half a millisecond of gRPC and Python. The router step costs three of them
(request headers, request body, response headers) and, for a stream naming a
model the gateway knows, decides nothing Envoy cannot: which chain serves the
model. So a streaming chat or completion request whose ``model`` names a
provider's model or alias takes a route Envoy picks from the body
(``json_to_metadata``, as the passthrough lane does), straight to that model's
chain; every attempt is still translated by the upstream step, which also
checks the request (its errors are the client's answer).

What the router step did for the request, the route does: it removes client
credentials and the gateway's own headers, sets the retry count, and stamps
when the request started and under which runtime version (the upstream step
reads both). Counting is split by who sees the end: the upstream step counts a
stream it delivered (with its tokens, retries and in-flight time); the gRPC
access log counts every other answer (an error, a client error from the
upstream step), as it does for the passthrough lane.

Anything else (``auto`` or no model, an unknown one, malformed JSON, a
non-boolean ``stream``) takes the ordinary route and the router step.
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import any_pb2

from control_plane.config import HapaxConfig
from control_plane.passthrough import body_routed, model_owners

STREAM_LANE = "stream"
HANDLERS = frozenset({"chat", "completion"})  # the APIs that stream
# Read by the upstream step (ext_proc/processor.py), removed before the provider.
START_HEADER = "x-hapax-start"
VERSION_HEADER = "x-hapax-version"


def stream_routes(config: HapaxConfig, handler: str, base: route_components_pb2.Route, version: str,
                  disabled_ext_proc: dict[str, any_pb2.Any]) -> Iterator[route_components_pb2.Route]:
    """The stream lane's variants of ``base``, one per model name; to go before it."""
    if handler not in HANDLERS:
        return
    for model, owner in model_owners(config).items():
        route = body_routed(config, base, STREAM_LANE, model, owner, stream=True,
                            disabled_ext_proc=disabled_ext_proc)
        route.request_headers_to_add.extend([
            _set(START_HEADER, "%START_TIME(%s.%6f)%"),  # unix time, as the router step writes it
            *([_set(VERSION_HEADER, version)] if version else []),
        ])
        yield route


def _set(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value),
                                      append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
