"""Each attempt's silence limit is its own provider's ``timeout``.

Envoy bounds an attempt's silence (before its first byte, and between two chunks)
with the route's ``per_try_idle_timeout``: one value for every attempt of a
request, whose attempts go to different providers (the members of its chain's
aggregate cluster). Envoy 1.40 has no such limit per upstream cluster: a
cluster's ``max_stream_duration`` bounds a whole stream, however lively, and its
``idle_timeout`` only a connection without requests. So the routes' limit is the
longest provider ``timeout``, and an attempt on a provider with a shorter one
passes through an internal listener of its own that holds it to it::

    chain.<first> -> provider.<name>   the aggregate's member, as for any provider: health
                                       check, outlier detection, endpoint metadata; its
                                       endpoint is the internal listener
                  -> attempt.<name>    internal listener: a route to direct.<name> whose
                                       per_try_idle_timeout is <name>'s timeout, no retries
                  -> direct.<name>     the provider itself (DNS, TLS)

Silent before its first byte, the attempt gets the listener's 504 (OpenAI error
JSON marked with ``wire.GATEWAY_ANSWER_HEADER``), which the chain's retry policy
fails over from like any 5xx; silent between two chunks, its stream is cut, as
the route's own limit does. A provider with the longest timeout is reached
directly: a configuration whose providers share one timeout (the default) has no
attempt listener at all. Measured on Envoy 1.40, the hop costs about 30 µs of
Envoy CPU per request.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.config.model import ProviderConfig
from control_plane.plan import Plan
from control_plane.protobuf import duration, pack
from control_plane.resources.listeners import local_reply_config
from hapax import wire

ATTEMPT_LISTENER_PREFIX = "attempt."
DIRECT_CLUSTER_PREFIX = "direct."
FORWARDED_PROTO = "x-forwarded-proto"


def attempt_listener_name(provider: str) -> str:
    return f"{ATTEMPT_LISTENER_PREFIX}{provider}"


def direct_cluster_name(provider: str) -> str:
    return f"{DIRECT_CLUSTER_PREFIX}{provider}"


def attempt_listeners(plan: Plan) -> list[listener_pb2.Listener]:
    return [attempt_listener(plan.config.providers[name]) for name in plan.capped_providers]


def attempt_listener(provider: ProviderConfig) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=attempt_listener_name(provider.name).replace(".", "_"),
        route_config=route_pb2.RouteConfiguration(
            name=attempt_listener_name(provider.name),
            virtual_hosts=[route_components_pb2.VirtualHost(
                name=provider.name, domains=["*"], routes=[_to_provider(provider)])],
        ),
        # Adds no x-envoy-* header of its own: the request and answer stay the chain's.
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(
            router_pb2.Router(suppress_envoy_headers=True)))],
        # Its replies look like the gateway's others, marked so that the upstream step
        # does not take them for the provider's.
        local_reply_config=local_reply_config([base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=wire.GATEWAY_ANSWER_HEADER, value="true"))]),
        # Silence is the route's to judge (the default would cut a provider slower than
        # 5 minutes), and a stream it cuts ends at once, not a second later.
        stream_idle_timeout=duration(0),
        delayed_close_timeout=duration(0),
    )
    return listener_pb2.Listener(
        name=attempt_listener_name(provider.name),
        internal_listener=listener_pb2.Listener.InternalListenerConfig(),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))])],
    )


def _to_provider(provider: ProviderConfig) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=provider.name,
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(
            cluster=direct_cluster_name(provider.name),
            timeout=duration(0),  # generations stream for minutes: silence is what is bounded
            # No retry here: failing over is the chain's (its route's retry policy).
            retry_policy=route_components_pb2.RetryPolicy(per_try_idle_timeout=duration(provider.timeout)),
        ),
        # A connection manager sets x-forwarded-proto on a request without one: this one's
        # would undo the chain's header allow-list (provider_headers.py), which let the
        # client's through only if the provider is forwarded it.
        request_headers_to_remove=[] if FORWARDED_PROTO in provider.forward_headers else [FORWARDED_PROTO],
    )
