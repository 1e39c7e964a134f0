"""What the resources call each other by, and the small pieces several of them share.

Listener, route configuration, cluster and filter names; where the ext_proc
processes listen; the request size limit; the JSON error answers Envoy gives
from a route. A name that crosses to ext_proc or the supervisor is
``hapax.wire``'s: it is only given a local name here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import string_pb2

from hapax import wire
from hapax.local_socket import LocalAddress

LISTENER_NAME = wire.LISTENER
METRICS_LISTENER_NAME = wire.METRICS_LISTENER
HTTP3_LISTENER_NAME = wire.HTTP3_LISTENER
ROUTE_CONFIG_NAME = "hapax_routes"
EXT_PROC_CLUSTER = "hapax_ext_proc"
EXT_PROC_HTTP_CLUSTER = wire.FIRST_WORKER_HTTP_CLUSTER
# The first ext_proc worker's gRPC alone, for what lives in one process: the queue (a slot must
# be given back where it was taken) and the router step of a route that coalesces requests.
FIRST_WORKER_CLUSTER = "hapax_ext_proc_first"
# Every chain's last member: where Envoy sends a request none of the chain's providers can take.
UNAVAILABLE_CLUSTER = "hapax_unavailable"
EXT_PROC_FILTER = "hapax.ext_proc"
# A different name on purpose: per-route overrides are keyed by filter name and
# Envoy applies them to upstream filters too; the routes' overrides are meant
# for the router-level step only.
UPSTREAM_EXT_PROC_FILTER = "hapax.ext_proc.upstream"

METADATA_NAMESPACE = wire.METADATA_NAMESPACE
# Key of a provider endpoint's ``hapax`` metadata saying where its key comes from
# ("providers.openai.api_key, from ${OPENAI_API_KEY}": names, never the key), for the 502 of a
# provider that refuses it. Written: clusters.py. Read: Envoy (listeners.py: provider_errors_filter).
HOST_KEY_SOURCE_KEY = "api_key_source"
HEALTH_PATH = wire.HEALTH_PATH

# Bodies above this get Envoy's 413, rewritten to OpenAI error JSON by the
# local reply config. (BUFFERED_PARTIAL would let ext_proc answer it, but it can
# release the headers to the router before the body step names the chain.)
MAX_REQUEST_BYTES = 8 * 1024 * 1024

# Envoy refuses a whole route configuration for one ``direct_response`` body over this
# (its default max_direct_response_body_size_bytes): a body that grows with the config
# must be bounded (routes.py: the 404's list of paths).
MAX_DIRECT_RESPONSE_BYTES = 4096


@dataclass(frozen=True)
class Address(LocalAddress):
    """Where one of Hapax's own processes listens, as Envoy is told it."""

    def envoy(self) -> address_pb2.Address:
        if self.path:
            return address_pb2.Address(pipe=address_pb2.Pipe(path=self.path))
        return socket_address(self.host, self.port)


@dataclass(frozen=True)
class ExtProcEndpoints:
    """Where the ext_proc processes listen: gRPC for Envoy, HTTP for /health and /metrics, and
    the provider verdicts Envoy's health checks poll.

    `hapax serve` puts gRPC and HTTP on Unix sockets, and the verdicts alone on a loopback TCP
    port: Envoy 1.40 health-checks an IP address only (a pipe, or an internal listener, as a
    health check address crashes its ``/config_dump?include_eds``, and the latter fails every
    check). The verdicts are what public /health shows anyway.
    """

    grpc: tuple[Address, ...]
    http: tuple[Address, ...]
    verdicts: tuple[Address, ...]

    @property
    def verdict(self) -> Address:
        """The first worker's: it is the one that probes."""
        verdict = self.verdicts[0]
        if verdict.path:
            raise ValueError(f"provider verdicts at {verdict}: Envoy health-checks an IP address only")
        return verdict


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def method_is(method: str) -> list[route_components_pb2.HeaderMatcher]:
    return [route_components_pb2.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=method))]


def error_body(message: str, err_type: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}})


def direct_json(status: int, message: str, err_type: str, code: str) -> route_components_pb2.DirectResponseAction:
    body = error_body(message, err_type, code)
    if len(body.encode()) > MAX_DIRECT_RESPONSE_BYTES:
        # A bug here, not in the config: said at build time rather than by Envoy's rejection.
        raise ValueError(f"a {status} answer of {len(body.encode())} bytes; Envoy refuses over "
                         f"{MAX_DIRECT_RESPONSE_BYTES}: {body[:200]}")
    return route_components_pb2.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_string=body))


def set_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    """A header a route or reply sets, replacing any the request or answer had."""
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value),
                                      append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


def json_headers(extra: dict[str, str] | None = None) -> list[base_pb2.HeaderValueOption]:
    return [set_header(k, v) for k, v in {"content-type": "application/json", **(extra or {})}.items()]
