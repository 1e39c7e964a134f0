"""Envoy's clusters and their endpoints.

- ``provider.<name>``: one host per provider, TLS with SNI for https. Envoy's
  health check polls ext_proc's verdict on it; outlier detection ejects it on
  passive signals; circuit breakers cap what it may hold. Its endpoint carries
  ``filter_metadata.hapax.provider``, so the upstream ext_proc step learns
  which provider an attempt goes to (``xds.upstream_host_metadata``). For a
  provider whose timeout is shorter than the longest, its host is its attempt
  listener and ``direct.<name>`` the provider itself (attempts.py).
- ``chain.<name>[.<family>]`` and ``lane.<chain>``: aggregate clusters over a chain's
  providers, whose upstream HTTP filters are the per-attempt step.
- ``hapax_ext_proc`` (gRPC) and ``hapax_ext_proc_http`` (verdicts, /health,
  /metrics): the ext_proc workers, as load assignments over EDS.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import (
    circuit_breaker_pb2,
    cluster_pb2,
    outlier_detection_pb2,
)
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2

from control_plane.config.model import HapaxConfig, ProviderConfig
from control_plane.plan import Chain, LaneModel, Plan, provider_cluster_name
from control_plane.protobuf import ads, duration, pack
from control_plane.resources import passthrough
from control_plane.resources.attempts import attempt_listener_name, direct_cluster_name
from control_plane.resources.ext_proc_filters import upstream_ext_proc_filter
from control_plane.resources.names import (
    EXT_PROC_CLUSTER,
    EXT_PROC_HTTP_CLUSTER,
    FIRST_WORKER_CLUSTER,
    HOST_KEY_SOURCE_KEY,
    MAX_REQUEST_BYTES,
    METADATA_NAMESPACE,
    UNAVAILABLE_CLUSTER,
    Address,
    socket_address,
)
from hapax import wire


def _http1_options(
    filters: list[hcm_pb2.HttpFilter] | None = None,
) -> dict[str, any_pb2.Any]:
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        ),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration(60)
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
# provider's health_check settings, so Envoy takes a 503 as it is: Envoy marks a
# host unhealthy on its first non-2xx answer, whatever unhealthy_threshold says.
# The threshold counts only polls that got no answer (timeout, refused), and
# those say that the checker is in trouble, not the provider: a worker paused
# for a garbage collection, a swap-in or a SIGSTOP must not take every provider
# out. A poll times out at half the interval, so VERDICT_UNANSWERED_POLLS
# unanswered polls span about 5 s of a silent worker.
VERDICT_POLL_SECONDS = 1.0
# Five: a worker being restarted by the supervisor refuses polls for a few seconds
# (backoff, then start-up), and a stalled one misses them; neither is the provider's fault.
VERDICT_UNANSWERED_POLLS = 5
PLAINTEXT_MATCH = "hapax_plaintext"


def _verdict_health_check(provider: ProviderConfig) -> health_check_pb2.HealthCheck:
    poll = min(VERDICT_POLL_SECONDS, provider.health_check.interval)
    check = health_check_pb2.HealthCheck(
        timeout=duration(poll / 2),
        interval=duration(poll),
        no_traffic_interval=duration(poll),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=VERDICT_UNANSWERED_POLLS),
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
    # A timed-out attempt is one of them: an attempt listener's 504 is a gateway
    # failure, and so is the route's per-try idle timeout as long as local-origin
    # errors are not split out (split, each new connection to a hanging provider
    # is a local-origin success that resets the count: it never reached 3).
    # Connect failures count as gateway failures (503) the same way. Envoy's
    # default lets the next successful health check un-eject the host, and our
    # verdict poll succeeds every second while the provider's model list answers
    # and its chat endpoint hangs: the ejection would last under a second.
    return outlier_detection_pb2.OutlierDetection(
        successful_active_health_check_uneject_host=wrappers_pb2.BoolValue(value=False),
        consecutive_5xx=wrappers_pb2.UInt32Value(value=5),
        consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=3),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
        split_external_local_origin_errors=False,
        interval=duration(2),
        base_ejection_time=duration(10),
        # Without the health check to end it early, Envoy's default growth (10 s
        # more per repeat, up to 300 s) would keep a recovered provider out for
        # minutes; a hanging one costs three timeouts per 10 s instead.
        max_ejection_time=duration(10),
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
        update_merge_window=duration(0),
    )


def provider_cluster(provider: ProviderConfig, verdict: Address, capped: bool = False) -> cluster_pb2.Cluster:
    """What a chain tries for ``provider``: the provider itself, or (``capped``) its attempt
    listener, which holds an attempt to the provider's own timeout (resources/attempts.py).
    Its health is ext_proc's verdict, polled at ``verdict`` (host:port: see ExtProcEndpoints)."""
    name = provider_cluster_name(provider.name)
    cluster = _attempt_listener_cluster(provider, name) if capped else _upstream_cluster(provider, name)
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0]
    endpoint.metadata.filter_metadata[METADATA_NAMESPACE].update(
        {wire.HOST_PROVIDER_KEY: provider.name, HOST_KEY_SOURCE_KEY: provider.api_key_source})
    endpoint.endpoint.health_check_config.address.CopyFrom(verdict.envoy())
    cluster.MergeFrom(cluster_pb2.Cluster(
        health_checks=[_verdict_health_check(provider)],
        outlier_detection=_outlier_detection(),
        common_lb_config=_failover_lb_config(),
    ))
    if cluster.HasField("transport_socket"):
        plaintext = cluster.transport_socket_matches.add(
            name=PLAINTEXT_MATCH,
            transport_socket=base_pb2.TransportSocket(
                name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer())),
        )
        plaintext.match.update({PLAINTEXT_MATCH: True})
    return cluster


def unavailable_cluster(verdict: Address) -> cluster_pb2.Cluster:
    """Every chain's last member, which Envoy's aggregate load balancer reaches only when none of
    the chain's providers is in rotation (each is a priority of its own; healthy_panic_threshold 0).

    Its one host is never health-checked, so it is always there; its metadata tells the chain's
    upstream step to answer the attempt itself, with each provider's reason, rather than send it
    (ext_proc/steps/upstream.py: _unavailable). Without it, such a request got Envoy's 503 "no
    healthy upstream", and a request Envoy routes from its body (the lanes) had no Python to say
    why. Its address is ext_proc's verdicts, which answer anything else with a 404.
    """
    endpoint = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=verdict.envoy()))
    endpoint.metadata.filter_metadata[METADATA_NAMESPACE].update({wire.HOST_UNAVAILABLE_KEY: "true"})
    return cluster_pb2.Cluster(
        name=UNAVAILABLE_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(1),
        load_assignment=_load_assignment(UNAVAILABLE_CLUSTER, [endpoint]),
    )


def direct_cluster(provider: ProviderConfig) -> cluster_pb2.Cluster:
    """A capped provider itself, for its attempt listener: its member cluster judges its health."""
    return _upstream_cluster(provider, direct_cluster_name(provider.name))


def _upstream_cluster(provider: ProviderConfig, name: str) -> cluster_pb2.Cluster:
    """One host, the provider's; TLS with SNI for https."""
    host, port, tls = _provider_endpoint(provider)
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=_stat_name(name),
        type=cluster_pb2.Cluster.LOGICAL_DNS,
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        connect_timeout=duration(min(provider.timeout, 10.0)),
        typed_extension_protocol_options=_http1_options(),
        circuit_breakers=_circuit_breakers(provider),
        load_assignment=_load_assignment(name, [endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=socket_address(host, port), hostname=_authority(host, port, tls)))]),
    )
    if tls:
        cluster.transport_socket.CopyFrom(_upstream_tls(host))
    return cluster


def _attempt_listener_cluster(provider: ProviderConfig, name: str) -> cluster_pb2.Cluster:
    host, port, tls = _provider_endpoint(provider)
    listener = address_pb2.Address(envoy_internal_address=address_pb2.EnvoyInternalAddress(
        server_listener_name=attempt_listener_name(provider.name)))
    return cluster_pb2.Cluster(
        name=name,
        alt_stat_name=_stat_name(name),
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(1),  # in-process
        typed_extension_protocol_options=_http1_options(),
        circuit_breakers=_circuit_breakers(provider),
        # The provider's authority all the same: a lane route's auto_host_rewrite takes it from here.
        load_assignment=_load_assignment(name, [endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=listener, hostname=_authority(host, port, tls)))]),
    )


def chain_cluster(config: HapaxConfig, chain: Chain) -> cluster_pb2.Cluster:
    return _aggregate_cluster(config, chain.cluster, chain, upstream_ext_proc_filter())


def lane_cluster(plan: Plan, lane: LaneModel) -> cluster_pb2.Cluster:
    """The passthrough lane's copy of its model's chain, whose attempts Envoy gives the key itself."""
    return _aggregate_cluster(plan.config, lane.cluster, lane.chain,
                              passthrough.upstream_filter(plan.config, lane, upstream_ext_proc_filter()))


def _aggregate_cluster(config: HapaxConfig, name: str, chain: Chain,
                       per_attempt: hcm_pb2.HttpFilter) -> cluster_pb2.Cluster:
    codec = hcm_pb2.HttpFilter(
        name="envoy.filters.http.upstream_codec",
        typed_config=pack(upstream_codec_pb2.UpstreamCodec()),
    )
    order = chain.providers
    # Last, after every provider: the reasons none can serve (unavailable_cluster), where it may.
    members = [*(provider_cluster_name(p) for p in order),
               *([UNAVAILABLE_CLUSTER] if chain.says_why_unavailable else [])]
    # Envoy counts retries in flight against the route's cluster, this one, not
    # against the provider it retries to; its default (3) would stop failover
    # under load. The chain allows what its providers allow together.
    retries_in_flight = sum(config.providers[p].circuit_breaker.max_retries for p in order)
    return cluster_pb2.Cluster(
        name=name,
        alt_stat_name=_stat_name(name),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration(10),
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


def ext_proc_grpc_cluster(workers: int = 1, streams_per_worker: int = 1024) -> cluster_pb2.Cluster:
    """``workers`` ext_proc processes, each allowed ``streams_per_worker`` gRPC streams at once."""
    cluster = _ext_proc_cluster(EXT_PROC_CLUSTER)
    # Envoy's default breaker (1,024 requests for the whole cluster, whatever the workers)
    # overflowed at 1,000 concurrent clients (a request holds one or two streams) and failed
    # them with an empty 500. The limit is the workers' capacity instead, so overflow comes
    # at a deliberate point: a stream over it is refused at once, and the request gets a 503
    # with retry-after (listeners.py: _overload_mappers). Refused in the upstream step, the
    # attempt is not failed over: the filter's local reply ends the request.
    limit = workers * streams_per_worker
    cluster.circuit_breakers.CopyFrom(circuit_breaker_pb2.CircuitBreakers(thresholds=[
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            max_requests=wrappers_pb2.UInt32Value(value=limit),
            max_pending_requests=wrappers_pb2.UInt32Value(value=limit),
            # HTTP/2: one connection per Envoy worker thread and ext_proc worker is plenty.
            max_connections=wrappers_pb2.UInt32Value(value=max(1024, workers * 64)),
        )]))
    cluster.MergeFrom(cluster_pb2.Cluster(
        # Whole bodies travel to ext_proc in one message. When a response body
        # pushed this connection over its write high watermark (1 MiB by default),
        # Envoy 1.40 disabled "the upstream stream" of the upstream ext_proc
        # filter and crashed (SIGSEGV, null pointer): keep the watermark above
        # the largest body plus its JSON rewrite.
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=4 * MAX_REQUEST_BYTES),
        typed_extension_protocol_options=_http2_options(),
        outlier_detection=_worker_outlier_detection(),
        health_checks=[_worker_health_check()],
    ))
    return cluster


def first_worker_cluster(streams_per_worker: int, max_waiting: int) -> cluster_pb2.Cluster:
    """The first ext_proc worker alone: the queue's checks (every waiting request holds one call)
    and the router step of the routes that coalesce requests."""
    cluster = _ext_proc_cluster(FIRST_WORKER_CLUSTER)
    limit = streams_per_worker + max_waiting
    cluster.circuit_breakers.CopyFrom(circuit_breaker_pb2.CircuitBreakers(thresholds=[
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            max_requests=wrappers_pb2.UInt32Value(value=limit),
            max_pending_requests=wrappers_pb2.UInt32Value(value=limit))]))
    cluster.MergeFrom(cluster_pb2.Cluster(typed_extension_protocol_options=_http2_options()))
    return cluster


def _worker_outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    """A worker that refuses connections (dead, being restarted by `hapax serve`) is set aside at once.

    Without it, round robin keeps sending a dead worker its share of the requests until it
    is back, and each fails. Only connect failures count (local origin): an ext_proc answer
    is never a reason. It stays out for a second at a time, until it answers again; at most
    half of the workers are set aside, so a gateway with one worker keeps trying it.
    """
    return outlier_detection_pb2.OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=1),
        enforcing_consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=100),
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=0),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=0),
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
        enforcing_local_origin_success_rate=wrappers_pb2.UInt32Value(value=0),
        interval=duration(1),
        base_ejection_time=duration(1),
        max_ejection_time=duration(2),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=50),
    )


def _worker_health_check() -> health_check_pb2.HealthCheck:
    """A worker is in rotation while it accepts connections, checked every second.

    Outlier detection sets a dead worker aside on its first refused connection, but only for a
    second or two at a time: each time it is let back, one request fails on it. Under `hapax
    serve` the supervisor restarts a worker within that; in a fleet, an ext_proc whose host or
    pod is gone stays gone until the orchestrator replaces it, and failed a request every
    second or two per Envoy meanwhile (tests/e2e/test_fleet_e2e.py). A refused connect marks it
    unhealthy until one succeeds. With every worker down (a gateway of one), Envoy's panic
    mode keeps trying them, as before.
    """
    return health_check_pb2.HealthCheck(
        timeout=duration(1), interval=duration(1), no_traffic_interval=duration(1),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=1),
        healthy_threshold=wrappers_pb2.UInt32Value(value=1),
        tcp_health_check=health_check_pb2.HealthCheck.TcpHealthCheck())


def ext_proc_http_cluster() -> cluster_pb2.Cluster:
    cluster = _ext_proc_cluster(EXT_PROC_HTTP_CLUSTER)
    cluster.health_checks.append(_worker_health_check())
    return cluster


def _ext_proc_cluster(name: str) -> cluster_pb2.Cluster:
    """The ext_proc workers, whose addresses arrive as endpoints (EDS) over ADS."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads()),
        connect_timeout=duration(1),
    )


def _load_assignment(cluster: str, endpoints: list[endpoint_components_pb2.LbEndpoint]
                     ) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=endpoints)])


def load_assignment(cluster: str, addresses: tuple[Address, ...]) -> endpoint_pb2.ClusterLoadAssignment:
    return _load_assignment(cluster, [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=a.envoy()))
        for a in addresses])
