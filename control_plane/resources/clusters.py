"""Translates a validated HapaxConfig into xDS resources.

Envoy gets clusters, endpoints, one listener and one route configuration; ext_proc
gets one ``hapax.v1.Runtime``. API keys go only into the Runtime resource: no
listener, route or cluster ever carries one.

Shape of the data plane (see DESIGN.md):

- ``provider.<name>``: one cluster per provider, TLS with SNI for https. Its
  endpoint carries ``filter_metadata.hapax.provider`` so the upstream ext_proc
  step learns which provider an attempt goes to (``xds.upstream_host_metadata``).
- ``chain.<name>``: an aggregate cluster trying ``<name>`` first, then the rest of
  ``provider_preference``. Upstream HTTP filters of an aggregate cluster are the
  ones Envoy runs (those of the member clusters are ignored), so the per-attempt
  ext_proc filter lives here.
- ``lane.<name>``: the same chain for the passthrough lane's requests, whose
  per-attempt filter adds the key itself where the provider takes the body as it
  is (control_plane/passthrough.py).
- The router-level ext_proc step reads the client request once, picks the chain
  and names it in the ``x-hapax-chain`` header, which the route uses as
  ``cluster_header``.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import (
    circuit_breaker_pb2,
    cluster_pb2,
    outlier_detection_pb2,
)
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    grpc_service_pb2,
    health_check_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import (
    listener_components_pb2,
    listener_pb2,
    quic_config_pb2,
    udp_listener_config_pb2,
)
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.http.custom_response.v3 import custom_response_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.custom_response.local_response_policy.v3 import (
    local_response_policy_pb2,
)
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.extensions.transport_sockets.quic.v3 import quic_transport_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import status_code_input_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from control_plane.resources import model_lane, passthrough
from control_plane.config.model import HapaxConfig, ProviderConfig, RouteConfig
from control_plane.plan import Chain, LaneModel, Plan, provider_cluster_name
from control_plane.pricing import price_for
from control_plane.tls import Certificate
from control_plane.xds import ads, duration, pack
from hapax import wire
from hapax.v1 import runtime_pb2

LISTENER_NAME = wire.LISTENER
METRICS_LISTENER_NAME = wire.METRICS_LISTENER
ROUTE_CONFIG_NAME = "hapax_routes"
EXT_PROC_CLUSTER = "hapax_ext_proc"
EXT_PROC_HTTP_CLUSTER = "hapax_ext_proc_http"
EXT_PROC_FILTER = "hapax.ext_proc"
# A different name on purpose: per-route overrides are keyed by filter name and
# Envoy applies them to upstream filters too; the routes' overrides are meant
# for the router-level step only.
UPSTREAM_EXT_PROC_FILTER = "hapax.ext_proc.upstream"
METADATA_NAMESPACE = wire.METADATA_NAMESPACE
HEALTH_PATH = wire.HEALTH_PATH
# The provider an attempt went to, in Envoy's substitution format.
UPSTREAM_PROVIDER = f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{wire.HOST_PROVIDER_KEY})%"
# Bodies above this get Envoy's 413, rewritten to OpenAI error JSON by the
# local reply config. (BUFFERED_PARTIAL would let ext_proc answer it, but it can
# release the headers to the router before the body step names the chain.)
MAX_REQUEST_BYTES = 8 * 1024 * 1024

HANDLER_METHODS = {wire.Handler.CHAT: "POST", wire.Handler.COMPLETION: "POST", wire.Handler.EMBEDDINGS: "POST",
                   wire.Handler.MODELS: "GET"}


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ExtProcEndpoints:
    """Where the ext_proc processes listen: gRPC for Envoy, HTTP for /health."""

    grpc: tuple[Address, ...]
    http: tuple[Address, ...]


_duration = duration
_ads = ads


def _socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


# ---------------------------------------------------------------- clusters


def _http1_options(
    filters: list[hcm_pb2.HttpFilter] | None = None,
) -> dict[str, any_pb2.Any]:
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        ),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=_duration(60)
        ),
    )
    if filters:
        opts.http_filters.extend(filters)
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(opts)}


def _http2_options() -> dict[str, any_pb2.Any]:
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(opts)}


def system_ca_file() -> str:
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.openssl_cafile


def _upstream_tls(sni: str) -> base_pb2.TransportSocket:
    ctx = tls_pb2.UpstreamTlsContext(
        sni=sni,
        common_tls_context=tls_pb2.CommonTlsContext(
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=system_ca_file()),
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.DNS,
                        matcher=string_pb2.StringMatcher(exact=sni),
                    )
                ],
            ),
        ),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(ctx))


def _stat_name(cluster_name: str) -> str:
    # Envoy's cluster tag ends at the first dot: "provider.openai" would give
    # envoy_cluster_name="provider" and put "openai" into every metric's name.
    return cluster_name.replace(".", "_")


def _provider_endpoint(provider: ProviderConfig) -> tuple[str, int, bool]:
    url = urlsplit(provider.base_url)
    tls = url.scheme == "https"
    return url.hostname or "", url.port or (443 if tls else 80), tls


def _authority(host: str, port: int, tls: bool) -> str:
    """The endpoint's Host header value (a lane route's auto_host_rewrite uses it)."""
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if tls else 80) else f"{name}:{port}"


# How often Envoy asks ext_proc for its verdict; the verdict itself follows the
# provider's health_check settings, so Envoy takes it as it is (thresholds 1).
VERDICT_POLL_SECONDS = 1.0
PLAINTEXT_MATCH = "hapax_plaintext"


def _verdict_health_check(provider: ProviderConfig) -> health_check_pb2.HealthCheck:
    poll = min(VERDICT_POLL_SECONDS, provider.health_check.interval)
    check = health_check_pb2.HealthCheck(
        timeout=_duration(poll),
        interval=_duration(poll),
        no_traffic_interval=_duration(poll),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=1),
        healthy_threshold=wrappers_pb2.UInt32Value(value=1),
        http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(
            host="hapax-ext-proc", path=wire.provider_verdict_path(provider.name)),
    )
    # The verdict comes from ext_proc over plain HTTP, even for a TLS provider.
    check.transport_socket_match_criteria.update({PLAINTEXT_MATCH: True})
    return check


def _outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    # Passive signals eject a provider faster than the probe notices; with one
    # host per provider cluster, ejection must be allowed to take all of it.
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=5),
        consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=3),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=3),
        enforcing_consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=100),
        interval=_duration(2),
        base_ejection_time=_duration(10),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=100),
    )


def _circuit_breakers(provider: ProviderConfig) -> circuit_breaker_pb2.CircuitBreakers:
    limits = provider.circuit_breaker
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=wrappers_pb2.UInt32Value(value=limits.max_concurrent_requests),
        max_requests=wrappers_pb2.UInt32Value(value=limits.max_concurrent_requests),
        max_pending_requests=wrappers_pb2.UInt32Value(value=limits.max_pending_requests),
        max_retries=wrappers_pb2.UInt32Value(value=limits.max_retries),
    )])


def _failover_lb_config() -> cluster_pb2.Cluster.CommonLbConfig:
    # Envoy's default sends traffic to unhealthy hosts when too few are healthy;
    # for a provider that is down, failing over is the whole point. And a health
    # change reaches the workers at once instead of after the default 1 s merge
    # window (meant for large clusters; ours have one host each).
    return cluster_pb2.Cluster.CommonLbConfig(
        healthy_panic_threshold=percent_pb2.Percent(value=0),
        update_merge_window=_duration(0),
    )


def provider_cluster(provider: ProviderConfig, verdict: Address) -> cluster_pb2.Cluster:
    host, port, tls = _provider_endpoint(provider)
    name = provider_cluster_name(provider.name)
    endpoint_metadata = base_pb2.Metadata()
    endpoint_metadata.filter_metadata[METADATA_NAMESPACE].update({wire.HOST_PROVIDER_KEY: provider.name})
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=_stat_name(name),
        type=cluster_pb2.Cluster.LOGICAL_DNS,
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        connect_timeout=_duration(min(provider.timeout, 10.0)),
        typed_extension_protocol_options=_http1_options(),
        health_checks=[_verdict_health_check(provider)],
        outlier_detection=_outlier_detection(),
        circuit_breakers=_circuit_breakers(provider),
        common_lb_config=_failover_lb_config(),
        load_assignment=_load_assignment(name, [endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=_socket_address(host, port), hostname=_authority(host, port, tls),
                health_check_config=endpoint_components_pb2.Endpoint.HealthCheckConfig(
                    address=_socket_address(verdict.host, verdict.port)),
            ),
            metadata=endpoint_metadata,
        )]),
    )
    if tls:
        cluster.transport_socket.CopyFrom(_upstream_tls(host))
        plaintext = cluster.transport_socket_matches.add(
            name=PLAINTEXT_MATCH,
            transport_socket=base_pb2.TransportSocket(
                name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer())),
        )
        plaintext.match.update({PLAINTEXT_MATCH: True})
    return cluster


def _ext_proc_filter(
    phase: wire.Phase, mode: processing_mode_pb2.ProcessingMode, attributes: tuple[str, ...] = (),
    response_attributes: tuple[str, ...] = (),
) -> ext_proc_pb2.ExternalProcessor:
    return ext_proc_pb2.ExternalProcessor(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXT_PROC_CLUSTER),
            timeout=_duration(5),
            initial_metadata=[base_pb2.HeaderValue(key=wire.PHASE_METADATA, value=phase)],
        ),
        processing_mode=mode,
        request_attributes=list(attributes),
        response_attributes=list(response_attributes),
        message_timeout=_duration(5),
        failure_mode_allow=False,
        allow_mode_override=True,
        # Routing headers (:authority, :path) and x-envoy-max-retries are set on purpose.
        mutation_rules=mutation_rules_pb2.HeaderMutationRules(
            allow_all_routing=wrappers_pb2.BoolValue(value=True),
            allow_envoy=wrappers_pb2.BoolValue(value=True),
        ),
    )


PM = processing_mode_pb2.ProcessingMode


def upstream_ext_proc_filter() -> hcm_pb2.HttpFilter:
    # Every attempt's response headers reach ext_proc (its status and any
    # retry-after); the body only when ext_proc asks for it per attempt with
    # mode_override, so a JSON answer already in OpenAI's shape never crosses Python.
    mode = PM(
        request_header_mode=PM.SEND,
        request_body_mode=PM.BUFFERED,
        response_header_mode=PM.SEND,
        response_body_mode=PM.NONE,
        request_trailer_mode=PM.SKIP,
        response_trailer_mode=PM.SKIP,
    )
    # The status comes with the first answer message: a stream the step does not read the
    # headers of learns it from its first piece (ext_proc/processor.py: STREAM_AS_SENT).
    flt = _ext_proc_filter(wire.Phase.UPSTREAM, mode, (wire.HOST_METADATA_ATTRIBUTE, wire.ROUTE_METADATA_ATTRIBUTE),
                           (wire.STATUS_ATTRIBUTE,))
    return hcm_pb2.HttpFilter(name=UPSTREAM_EXT_PROC_FILTER, typed_config=pack(flt))


def chain_cluster(config: HapaxConfig, chain: Chain) -> cluster_pb2.Cluster:
    return _aggregate_cluster(config, chain.cluster, chain, upstream_ext_proc_filter())


def lane_cluster(plan: Plan, lane: LaneModel) -> cluster_pb2.Cluster:
    """The passthrough lane's copy of its model's chain, whose attempts Envoy gives the key itself."""
    return _aggregate_cluster(plan.config, passthrough.lane_cluster_name(lane.first), plan.chains[lane.first],
                              passthrough.upstream_filter(plan.config, lane, upstream_ext_proc_filter()))


def _aggregate_cluster(config: HapaxConfig, name: str, chain: Chain,
                       per_attempt: hcm_pb2.HttpFilter) -> cluster_pb2.Cluster:
    codec = hcm_pb2.HttpFilter(
        name="envoy.filters.http.upstream_codec",
        typed_config=pack(upstream_codec_pb2.UpstreamCodec()),
    )
    order = chain.providers
    members = [provider_cluster_name(p) for p in order]
    # Envoy counts retries in flight against the route's cluster, this one, not
    # against the provider it retries to; its default (3) would stop failover
    # under load. The chain allows what its providers allow together.
    retries_in_flight = sum(config.providers[p].circuit_breaker.max_retries for p in order)
    return cluster_pb2.Cluster(
        name=name,
        alt_stat_name=_stat_name(name),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=_duration(10),
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.aggregate",
            typed_config=pack(aggregate_pb2.ClusterConfig(clusters=members)),
        ),
        typed_extension_protocol_options=_http1_options([per_attempt, codec]),
        common_lb_config=_failover_lb_config(),
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_retries=wrappers_pb2.UInt32Value(value=retries_in_flight))]),
    )


def ext_proc_grpc_cluster() -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=EXT_PROC_CLUSTER,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=_duration(1),
        # Whole bodies travel to ext_proc in one message. When a response body
        # pushed this connection over its write high watermark (1 MiB by default),
        # Envoy 1.40 disabled "the upstream stream" of the upstream ext_proc
        # filter and crashed (SIGSEGV, null pointer): keep the watermark above
        # the largest body plus its JSON rewrite.
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=4 * MAX_REQUEST_BYTES),
        typed_extension_protocol_options=_http2_options(),
    )


def ext_proc_http_cluster() -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=EXT_PROC_HTTP_CLUSTER,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=_duration(1),
    )


def _load_assignment(cluster: str, endpoints: list[endpoint_components_pb2.LbEndpoint]
                     ) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=endpoints)])


def load_assignment(cluster: str, addresses: tuple[Address, ...]) -> endpoint_pb2.ClusterLoadAssignment:
    return _load_assignment(cluster, [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(a.host, a.port)))
        for a in addresses])


# ---------------------------------------------------------------- routes


def _error_body(status: int, message: str, err_type: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}})


def _direct_json(status: int, message: str, err_type: str, code: str) -> route_components_pb2.DirectResponseAction:
    return route_components_pb2.DirectResponseAction(
        status=status,
        body=base_pb2.DataSource(inline_string=_error_body(status, message, err_type, code)),
    )


def _json_headers(extra: dict[str, str] | None = None) -> list[base_pb2.HeaderValueOption]:
    headers = {"content-type": "application/json", **(extra or {})}
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for k, v in headers.items()
    ]


def _per_route_ext_proc(mode: processing_mode_pb2.ProcessingMode | None) -> dict[str, any_pb2.Any]:
    if mode is None:
        per_route = ext_proc_pb2.ExtProcPerRoute(disabled=True)
    else:
        per_route = ext_proc_pb2.ExtProcPerRoute(
            overrides=ext_proc_pb2.ExtProcOverrides(processing_mode=mode)
        )
    return {EXT_PROC_FILTER: pack(per_route)}


def _route_metadata(route: RouteConfig) -> base_pb2.Metadata:
    md = base_pb2.Metadata()
    md.filter_metadata[METADATA_NAMESPACE].update(
        {wire.RouteKey.HANDLER: route.handler, wire.RouteKey.VERSION: route.version, wire.RouteKey.ROUTE: route.path,
         **dict(route.metrics_labels)}
    )
    return md


# ---------------------------------------------------------------- Envoy stats by department
#
# A provider route's stats live under vhost.hapax.route.<stat_prefix>.*; the
# prefix is the route's path followed by its metrics labels as key.value pairs,
# and the bootstrap's stats_tags (fixed when Envoy starts) turn each into a tag:
#   vhost.hapax.route.v1_marketing_completions.department.marketing.upstream_rq_2xx
#   -> envoy_vhost_route_upstream_rq{envoy_route="v1_marketing_completions", department="marketing", ...}
# (envoy_route is Envoy's own tag for the segment after "route.").
_STAT_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def stats_label_keys(config: HapaxConfig) -> tuple[str, ...]:
    """Every metrics label key of the config's routes: the Envoy stat tags to create at start."""
    return tuple(sorted({key for route in config.routes for key in route.metrics_labels}))


def _stat_segment(text: str) -> str:
    return _STAT_UNSAFE.sub("_", text.strip("/")) or "_"


def route_stat_prefix(route: RouteConfig, label_keys: tuple[str, ...]) -> str:
    """Only keys Envoy has a tag for: any other would end up inside the metric's name."""
    parts = [_stat_segment(route.path)]
    for key in label_keys:
        if key in route.metrics_labels:
            parts += [key, _stat_segment(route.metrics_labels[key])]
    return ".".join(parts)


def envoy_stats_tags(label_keys: tuple[str, ...]) -> list[dict[str, str]]:
    """The bootstrap's stats_config.stats_tags for route_stat_prefix's layout."""
    route = r"^vhost\.[^.]+\.route\."
    # Pairs are skipped two segments at a time, so a key is never matched at a value's place.
    return [{"tag_name": key, "regex": route + r"[^.]+\.(?:[^.]+\.[^.]+\.)*?(" + key + r"\.([^.]+)\.)"}
             for key in label_keys]


def _retry_policy(plan: Plan) -> route_components_pb2.RetryPolicy:
    # Enough attempts for the longest chain; the router step narrows it to the
    # request's own chain with x-envoy-max-retries.
    config, longest_chain = plan.config, plan.longest_chain
    retries = max(config.retry.max_attempts or longest_chain, longest_chain, 2) - 1
    silence = max((p.timeout for p in config.providers.values()), default=60.0)
    return route_components_pb2.RetryPolicy(
        retry_on="connect-failure,refused-stream,reset,5xx,retriable-status-codes",
        retriable_status_codes=[429],
        num_retries=wrappers_pb2.UInt32Value(value=retries),
        # A provider silent for its whole timeout (before its first byte, or
        # between chunks) fails the attempt; before the first byte, that fails over.
        per_try_idle_timeout=_duration(silence),
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=_duration(config.retry.backoff_base),
            max_interval=_duration(config.retry.backoff_max),
        ),
        # With an aggregate cluster each member is a priority level: moving the
        # retry off the priorities already tried is what makes it a failover.
        retry_priority=route_components_pb2.RetryPolicy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=pack(
                previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1)
            ),
        ),
    )


def provider_route(plan: Plan, route: RouteConfig,
                   label_keys: tuple[str, ...] = ()) -> route_components_pb2.Route:
    method = HANDLER_METHODS[route.handler]
    # The router step sees each request's final response headers (after every
    # retry, Envoy's own replies included): that is where requests are counted.
    if route.handler == wire.Handler.MODELS:
        mode = PM(request_header_mode=PM.SEND, request_body_mode=PM.NONE,
                  response_header_mode=PM.SKIP, response_body_mode=PM.NONE)
    else:
        mode = PM(request_header_mode=PM.SEND, request_body_mode=PM.BUFFERED,
                  response_header_mode=PM.SEND, response_body_mode=PM.NONE)
    retry_policy = _retry_policy(plan)
    attempts = retry_policy.num_retries.value + 1
    return route_components_pb2.Route(
        name=f"{route.handler}:{route.path}",
        match=route_components_pb2.RouteMatch(path=route.path, headers=_method_is(method)),
        route=route_components_pb2.RouteAction(
            cluster_header=wire.CHAIN_HEADER,
            # Generations can stream for minutes: bound idleness, not total time.
            # Each attempt has its own idle limit; the client's stream may sit idle
            # through every attempt of the chain before the first byte.
            timeout=_duration(0),
            idle_timeout=_duration(retry_policy.per_try_idle_timeout.ToNanoseconds() / 1e9 * attempts + 1),
            retry_policy=retry_policy,
        ),
        metadata=_route_metadata(route),
        stat_prefix=route_stat_prefix(route, label_keys),
        typed_per_filter_config=_per_route_ext_proc(mode),
    )


def method_not_allowed_route(path: str, method: str) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=f"405:{path}",
        match=route_components_pb2.RouteMatch(path=path),
        direct_response=_direct_json(
            405,
            f"Method not allowed: {path} accepts {method} only.",
            "invalid_request_error",
            "method_not_allowed",
        ),
        response_headers_to_add=_json_headers({"allow": method}),
        typed_per_filter_config=_per_route_ext_proc(None),
    )


def _method_is(method: str) -> list[route_components_pb2.HeaderMatcher]:
    return [route_components_pb2.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=method))]


def health_route() -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name="health",
        match=route_components_pb2.RouteMatch(path=HEALTH_PATH, headers=_method_is("GET")),
        route=route_components_pb2.RouteAction(cluster=EXT_PROC_HTTP_CLUSTER, timeout=_duration(5)),
        typed_per_filter_config=_per_route_ext_proc(None),
    )


def not_found_route(config: HapaxConfig) -> route_components_pb2.Route:
    known = ", ".join(sorted({r.path for r in config.routes} | {HEALTH_PATH}))
    return route_components_pb2.Route(
        name="404",
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=_direct_json(
            404, f"Unknown request URL. This gateway serves: {known}.",
            "invalid_request_error", "unknown_url",
        ),
        response_headers_to_add=_json_headers(),
        typed_per_filter_config=_per_route_ext_proc(None),
    )


def route_configuration(plan: Plan, label_keys: tuple[str, ...] | None = None) -> route_pb2.RouteConfiguration:
    config = plan.config
    keys = stats_label_keys(config) if label_keys is None else label_keys
    routes = [health_route(), method_not_allowed_route(HEALTH_PATH, "GET")]
    lane_paths = set()
    for route in config.routes:
        base = provider_route(plan, route, keys)
        lanes = [*passthrough.lane_routes(plan, route.handler, base, _per_route_ext_proc(None)),
                 *model_lane.model_routes(plan, route.handler, base, _per_route_ext_proc(None))]
        if lanes:
            lane_paths.add(route.path)
        routes += [*lanes, base]
        routes.append(method_not_allowed_route(route.path, HANDLER_METHODS[route.handler]))
    routes.append(not_found_route(config))
    if lane_paths:
        # Only a lane route and the ordinary route it is a variant of need the body's fields.
        for r in routes:
            if not (r.HasField("route") and r.match.path in lane_paths):
                for name, config_any in passthrough.json_to_metadata_disabled().items():
                    r.typed_per_filter_config[name].CopyFrom(config_any)
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[route_components_pb2.VirtualHost(
            name="hapax", domains=["*"], routes=routes,
            # Lets the upstream step tell a first attempt from a retry (metrics).
            include_request_attempt_count=True,
            response_headers_to_add=_alt_svc(config))],
    )


# ---------------------------------------------------------------- listener

# Envoy's own local replies (no healthy provider, connect failure, timeout...)
# are plain text by default; clients of an OpenAI API expect error JSON.
_LOCAL_REPLY_ERRORS = (
    (("UT",), 504, "The provider did not answer in time.", "timeout"),
    (("UO",), 503, "The gateway is at capacity for this provider.", "overloaded"),
    (("NC",), 503, "No provider chain was selected for this request.", "no_provider"),
    (("UH", "UF", "URX", "UC", "UR", "LR"), 503, "No provider could serve the request.", "provider_unavailable"),
)


def _json_mapper(flt: accesslog_pb2.AccessLogFilter, status: int, message_text: str,
                 err_type: str, code: str) -> hcm_pb2.ResponseMapper:
    fmt = struct_pb2.Struct()
    fmt.update({"error": {"message": message_text, "type": err_type, "param": None, "code": code}})
    return hcm_pb2.ResponseMapper(
        filter=flt,
        status_code=wrappers_pb2.UInt32Value(value=status),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(json_format=fmt),
    )


def _local_reply_config() -> hcm_pb2.LocalReplyConfig:
    mappers = [
        _json_mapper(
            accesslog_pb2.AccessLogFilter(
                response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(flags))),
            status, f"{text} (%LOCAL_REPLY_BODY%)", "server_error", code)
        for flags, status, text, code in _LOCAL_REPLY_ERRORS
    ]
    # Envoy answers 413 itself when a body outgrows the buffer; ext_proc never does.
    too_large = accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
        comparison=accesslog_pb2.ComparisonFilter(
            op=accesslog_pb2.ComparisonFilter.EQ,
            value=base_pb2.RuntimeUInt32(default_value=413, runtime_key="hapax.unused.413"))))
    mappers.append(_json_mapper(
        too_large, 413, f"The request body is larger than the gateway accepts ({MAX_REQUEST_BYTES} bytes).",
        "invalid_request_error", "request_too_large"))
    return hcm_pb2.LocalReplyConfig(mappers=mappers)


# A provider that refuses the gateway's credentials is the gateway's problem, not
# the client's: a client that saw 401 would think its own key was wrong.
_CREDENTIAL_REJECTED = (401, 403)


def _status_is(status: int) -> matcher_pb2.Matcher.MatcherList.Predicate:
    return matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=extension_pb2.TypedExtensionConfig(
                name="status", typed_config=pack(status_code_input_pb2.HttpResponseStatusCodeMatchInput())),
            value_match=xds_string_pb2.StringMatcher(exact=str(status)),
        )
    )


def credential_rejected_filter() -> hcm_pb2.HttpFilter:
    body = struct_pb2.Struct()
    body.update({"error": {
        "message": f"The provider '{UPSTREAM_PROVIDER}' rejected the gateway's credentials "
                   "(HTTP %RESPONSE_CODE%). This is a gateway configuration problem, not the client's: "
                   "check that provider's api_key.",
        "type": "server_error", "param": None, "code": "provider_auth_failed"}})
    policy = local_response_policy_pb2.LocalResponsePolicy(
        status_code=wrappers_pb2.UInt32Value(value=502),
        body_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=body),
    )
    on_match = matcher_pb2.Matcher.OnMatch(
        action=extension_pb2.TypedExtensionConfig(name="credential_rejected", typed_config=pack(policy)))
    matcher = matcher_pb2.Matcher(matcher_list=matcher_pb2.Matcher.MatcherList(matchers=[
        matcher_pb2.Matcher.MatcherList.FieldMatcher(
            predicate=matcher_pb2.Matcher.MatcherList.Predicate(
                or_matcher=matcher_pb2.Matcher.MatcherList.Predicate.PredicateList(
                    predicate=[_status_is(s) for s in _CREDENTIAL_REJECTED])),
            on_match=on_match)
    ]))
    config = custom_response_pb2.CustomResponse(custom_response_matcher=matcher)
    return hcm_pb2.HttpFilter(name="envoy.filters.http.custom_response", typed_config=pack(config))


def router_ext_proc_filter() -> hcm_pb2.HttpFilter:
    # Per-route overrides set the real mode; this default only covers routes
    # that have none, which is none of ours (see route_configuration).
    mode = PM(request_header_mode=PM.SEND, request_body_mode=PM.NONE,
              response_header_mode=PM.SKIP, response_body_mode=PM.NONE,
              request_trailer_mode=PM.SKIP, response_trailer_mode=PM.SKIP)
    return hcm_pb2.HttpFilter(name=EXT_PROC_FILTER, typed_config=pack(_ext_proc_filter(wire.Phase.ROUTER, mode)))


# One JSON line per request on Envoy's stderr. No credentials, no bodies, no
# query strings (some clients put keys there); request_id is the x-request-id
# that ext_proc's log lines carry too.
_ACCESS_LOG_FIELDS = {
    "ts": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "level": "info",
    "component": "envoy",
    "logger": "access",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    # The client's path, from the route (the request's :path is the provider's
    # once ext_proc has rewritten it); Envoy's own routes (404, /health) have none.
    "path": f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{wire.RouteKey.ROUTE})%",
    "protocol": "%PROTOCOL%",
    "route": "%ROUTE_NAME%",
    "provider": UPSTREAM_PROVIDER,
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "duration_ms": "%DURATION%",
    "upstream_first_byte_ms": "%RESPONSE_DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
}


def access_log(config: HapaxConfig) -> list[accesslog_pb2.AccessLog]:
    if not config.logging.access_log:
        return []
    fields = dict(_ACCESS_LOG_FIELDS)
    for key in stats_label_keys(config):  # department & co., from the route's metadata
        fields[key] = f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{key})%"
    fmt = struct_pb2.Struct()
    fmt.update(fields)
    log_format = substitution_format_string_pb2.SubstitutionFormatString(json_format=fmt)
    return [accesslog_pb2.AccessLog(
        name="envoy.access_loggers.stderr",
        typed_config=pack(stream_pb2.StderrAccessLog(log_format=log_format)),
    )]


def http_connection_manager(plan: Plan) -> hcm_pb2.HttpConnectionManager:
    config, lane = plan.config, plan.uses_lanes
    return hcm_pb2.HttpConnectionManager(
        access_log=access_log(config) + ([passthrough.access_logger(EXT_PROC_CLUSTER)] if lane else []),
        stat_prefix="hapax",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(route_config_name=ROUTE_CONFIG_NAME, config_source=_ads()),
        http_filters=[
            *([passthrough.json_to_metadata_filter()] if lane else []),
            credential_rejected_filter(),
            router_ext_proc_filter(),
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router(
                upstream_log=[passthrough.hold_off_logger(EXT_PROC_CLUSTER)] if lane else [],
            ))),
        ],
        local_reply_config=_local_reply_config(),
        stream_idle_timeout=_duration(300),
        request_timeout=_duration(0),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(idle_timeout=_duration(300)),
        use_remote_address=wrappers_pb2.BoolValue(value=True),
    )


def listener(plan: Plan) -> listener_pb2.Listener:
    config = plan.config
    chain = listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager",
        typed_config=pack(http_connection_manager(plan)),
    )])
    if config.server.tls is not None:
        # HTTPS; HTTP/2 or HTTP/1.1 by ALPN (codec AUTO follows it).
        chain.transport_socket.CopyFrom(base_pb2.TransportSocket(
            name="envoy.transport_sockets.tls",
            typed_config=pack(_downstream_tls(TLS_SECRET, ["h2", "http/1.1"]))))
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=_socket_address(config.server.host, config.server.port),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=MAX_REQUEST_BYTES),
        filter_chains=[chain],
    )


# ---------------------------------------------------------------- HTTPS and HTTP/3
#
# Certificates reach Envoy only as SDS secrets over ADS (checked by the config
# loader first, see control_plane/tls.py); a renewed certificate is a new
# secret version, taken by Envoy without touching the listeners.
TLS_SECRET = "hapax_tls"
HTTP3_TLS_SECRET = "hapax_http3_tls"
HTTP3_LISTENER_NAME = wire.HTTP3_LISTENER
ALT_SVC_MAX_AGE = 86400


def tls_secrets(config: HapaxConfig) -> list[secret_pb2.Secret]:
    secrets = []
    if config.server.tls is not None:
        secrets.append(_secret(TLS_SECRET, config.server.tls))
    http3 = config.server.http3
    if http3.enabled and http3.certificate is not None and http3.certificate != config.server.tls:
        secrets.append(_secret(HTTP3_TLS_SECRET, http3.certificate))
    return secrets


def _secret(name: str, certificate: Certificate) -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=certificate.cert_pem),
        private_key=base_pb2.DataSource(inline_bytes=certificate.key_pem),
    ))


def _downstream_tls(secret: str, alpn: list[str]) -> tls_pb2.DownstreamTlsContext:
    return tls_pb2.DownstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name=secret, sds_config=_ads())],
        alpn_protocols=alpn,
    ))


def http3_listener(plan: Plan) -> listener_pb2.Listener | None:
    config = plan.config
    http3 = config.server.http3
    if not http3.enabled or http3.certificate is None:
        return None
    secret = TLS_SECRET if http3.certificate == config.server.tls else HTTP3_TLS_SECRET
    transport = quic_transport_pb2.QuicDownstreamTransport(
        downstream_tls_context=_downstream_tls(secret, ["h3"]),
        # No 0-RTT: every API call is a POST that spends money; a replayed one
        # must be impossible, not merely unlikely. Resumption still saves the
        # certificate exchange. (README: HTTP/3.)
        enable_early_data=wrappers_pb2.BoolValue(value=False),
    )
    hcm = http_connection_manager(plan)
    hcm.codec_type = hcm_pb2.HttpConnectionManager.HTTP3
    hcm.http3_protocol_options.CopyFrom(protocol_pb2.Http3ProtocolOptions())
    address = _socket_address(config.server.host, config.server.http3_port)
    address.socket_address.protocol = address_pb2.SocketAddress.UDP
    return listener_pb2.Listener(
        name=HTTP3_LISTENER_NAME,
        address=address,
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=MAX_REQUEST_BYTES),
        udp_listener_config=udp_listener_config_pb2.UdpListenerConfig(
            quic_options=quic_config_pb2.QuicProtocolOptions()),
        filter_chains=[listener_components_pb2.FilterChain(
            transport_socket=base_pb2.TransportSocket(name="envoy.transport_sockets.quic", typed_config=pack(transport)),
            filters=[listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))],
        )],
    )


def _alt_svc(config: HapaxConfig) -> list[base_pb2.HeaderValueOption]:
    """Advertises HTTP/3 on every answer, so that clients upgrade (not with an ephemeral port: unknown here)."""
    http3 = config.server.http3
    if not http3.enabled or http3.certificate is None or config.server.http3_port == 0:
        return []
    return [base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="alt-svc", value=f'h3=":{config.server.http3_port}"; ma={ALT_SVC_MAX_AGE}'),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)]


# ---------------------------------------------------------------- ext_proc runtime


def runtime(plan: Plan) -> runtime_pb2.Runtime:
    """What ext_proc needs of the plan: it derives none of it again."""
    config = plan.config
    out = runtime_pb2.Runtime(config_version=plan.version)
    for p in config.providers.values():
        provider = out.providers.add(
            name=p.name, type=p.type, model=p.model, aliases=list(p.aliases),
            base_url=p.base_url, cluster=provider_cluster_name(p.name),
            timeout_seconds=p.timeout, api_key=p.api_key,
            health_check=runtime_pb2.HealthCheck(
                interval_seconds=p.health_check.interval, timeout_seconds=p.health_check.timeout,
                healthy_threshold=p.health_check.healthy_threshold,
                unhealthy_threshold=p.health_check.unhealthy_threshold),
        )
        price = price_for(p.model, config.pricing)
        if price is not None:
            provider.price.CopyFrom(runtime_pb2.ModelPrice(input_per_million=price.input,
                                                           output_per_million=price.output))
    for r in config.routes:
        route = out.routes.add(path=r.path, handler=r.handler, version=r.version)
        route.metrics_labels.update(dict(r.metrics_labels))
    for chain in plan.chains.values():  # the default chain first
        out.chains.add(cluster=chain.cluster, providers=list(chain.providers), attempts=chain.attempts)
    for model, owner in plan.model_owners.items():
        out.models.add(name=model, provider=owner, chain=plan.chains[owner].cluster)
    return out


def metrics_listener(config: HapaxConfig) -> listener_pb2.Listener:
    """``server.metrics_port``: GET /metrics, answered by ext_proc."""
    routes = route_pb2.RouteConfiguration(name=METRICS_LISTENER_NAME, virtual_hosts=[route_components_pb2.VirtualHost(
        name="metrics", domains=["*"], routes=[
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(path=wire.METRICS_PATH, headers=_method_is("GET")),
                route=route_components_pb2.RouteAction(cluster=EXT_PROC_HTTP_CLUSTER, timeout=_duration(10))),
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/"),
                direct_response=_direct_json(404, "This port serves GET /metrics only.",
                                             "invalid_request_error", "unknown_url"),
                response_headers_to_add=_json_headers()),
        ])])
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=METRICS_LISTENER_NAME,
        route_config=routes,
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=METRICS_LISTENER_NAME,
        address=_socket_address(config.server.host, config.server.metrics_port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))])],
    )
