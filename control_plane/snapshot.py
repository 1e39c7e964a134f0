"""One immutable, versioned set of xDS resources, checked for consistency.

A snapshot is what the ADS server hands out: for every type URL, the resources
of that type at one version. ``build_snapshot`` is the one place that
assembles one: it makes the config's Plan once and takes each kind of resource
from the module of control_plane/resources/ that builds it.
``check_consistency`` refuses a snapshot in which any name points at a resource
that is not there (Envoy would otherwise warm forever or route into nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.quic.v3 import quic_transport_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import message

from control_plane.config.model import HapaxConfig
from control_plane.plan import LaneModel, Plan, make_plan
from control_plane.resources import attempts, clusters, listeners, routes, secrets
from control_plane.resources.names import (
    EXT_PROC_CLUSTER,
    EXT_PROC_HTTP_CLUSTER,
    FIRST_WORKER_CLUSTER,
    ExtProcEndpoints,
)
from control_plane.resources.runtime import runtime
from hapax import wire
from hapax.v1 import runtime_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
RUNTIME = wire.RUNTIME_TYPE_URL
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Order in which a new version is pushed: clusters before the endpoints that fill
# them, secrets (certificates) before the listeners that use them, listeners
# before the routes they reference (go-control-plane's order), Hapax's own
# runtime last.
PUSH_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE, RUNTIME)


class InconsistentSnapshot(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("inconsistent snapshot: " + "; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Snapshot:
    version: str
    resources: Mapping[str, Mapping[str, message.Message]] = field(default_factory=dict)

    def of_type(self, type_url: str) -> Mapping[str, message.Message]:
        return self.resources.get(type_url, MappingProxyType({}))


def _by_name(items: list[message.Message], name_of) -> Mapping[str, message.Message]:
    return MappingProxyType({name_of(i): i for i in items})


def make_snapshot(version: str, by_type: dict[str, list[message.Message]]) -> Snapshot:
    names = {
        CLUSTER: lambda c: c.name,
        ENDPOINT: lambda e: e.cluster_name,
        LISTENER: lambda lst: lst.name,
        ROUTE: lambda r: r.name,
        RUNTIME: lambda _: wire.RUNTIME_NAME,
        SECRET: lambda secret: secret.name,
    }
    snap = Snapshot(
        version=version,
        resources=MappingProxyType(
            {t: _by_name(items, names[t]) for t, items in by_type.items()}
        ),
    )
    check_consistency(snap)
    return snap


def build_snapshot(config: HapaxConfig, version: str, ext_proc: ExtProcEndpoints,
                   stats_label_keys: tuple[str, ...] | None = None) -> Snapshot:
    """Every resource of ``config`` at ``version``."""
    return snapshot_of_plan(make_plan(config), version, ext_proc, stats_label_keys)


def snapshot_of_plan(plan: Plan, version: str, ext_proc: ExtProcEndpoints,
                     stats_label_keys: tuple[str, ...] | None = None) -> Snapshot:
    """Every resource of ``plan``'s config at ``version``.

    ``stats_label_keys``: the metrics label keys Envoy has stat tags for (those of the config it started with).
    """
    config = plan.config
    return make_snapshot(
        version,
        {
            CLUSTER: _clusters(plan, ext_proc),
            ENDPOINT: _endpoints(plan, ext_proc),
            SECRET: [*secrets.tls_secrets(config), *secrets.key_secrets(plan)],
            LISTENER: [*(lst for lst in (listeners.listener(plan), listeners.metrics_listener(config),
                                         listeners.http3_listener(plan)) if lst is not None),
                       *attempts.attempt_listeners(plan)],
            ROUTE: [routes.route_configuration(plan, stats_label_keys, version)],
            RUNTIME: [runtime(plan, version)],
        },
    )


def _clusters(plan: Plan, ext_proc: ExtProcEndpoints) -> list[cluster_pb2.Cluster]:
    # The ext_proc cluster's limits follow the workers that are there (their gRPC endpoints).
    out = [clusters.ext_proc_grpc_cluster(len(ext_proc.grpc), plan.config.ext_proc.max_streams_per_worker),
           clusters.ext_proc_http_cluster(), clusters.unavailable_cluster(ext_proc.verdict)]
    if plan.config.uses_first_worker:
        waiting = plan.config.queue.max_waiting if plan.config.queue is not None else 0
        out.append(clusters.first_worker_cluster(plan.config.ext_proc.max_streams_per_worker, waiting))
    # Envoy polls one ext_proc for each provider's verdict (they all probe alike).
    capped = plan.capped_providers
    out += [clusters.provider_cluster(p, ext_proc.verdict, p.name in capped) for p in plan.config.providers.values()]
    out += [clusters.direct_cluster(plan.config.providers[name]) for name in capped]
    out += [clusters.chain_cluster(plan.config, chain) for chain in plan.chains.values()]
    lanes: dict[str, LaneModel] = {}  # lane models of one chain and the same providers share a cluster
    for lane in plan.all_lane_models:
        lanes.setdefault(lane.cluster, lane)
    out += [clusters.lane_cluster(plan, lane) for lane in lanes.values()]
    return out


def _endpoints(plan: Plan, ext_proc: ExtProcEndpoints) -> list[endpoint_pb2.ClusterLoadAssignment]:
    return [
        clusters.load_assignment(EXT_PROC_CLUSTER, ext_proc.grpc),
        # /health and /metrics from the first ext_proc only: the one whose provider
        # verdicts Envoy polls, so that what /health says is what Envoy does.
        clusters.load_assignment(EXT_PROC_HTTP_CLUSTER, ext_proc.http[:1]),
        *([clusters.load_assignment(FIRST_WORKER_CLUSTER, ext_proc.grpc[:1])] if plan.config.uses_first_worker else []),
    ]


# ---------------------------------------------------------------- consistency


def _aggregate_members(cluster: cluster_pb2.Cluster) -> list[str]:
    if cluster.cluster_type.name != "envoy.clusters.aggregate":
        return []
    cfg = aggregate_pb2.ClusterConfig()
    cluster.cluster_type.typed_config.Unpack(cfg)
    return list(cfg.clusters)


def _connection_managers(lst: listener_pb2.Listener) -> list[hcm_pb2.HttpConnectionManager]:
    found = []
    for chain in lst.filter_chains:
        for flt in chain.filters:
            if flt.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                hcm = hcm_pb2.HttpConnectionManager()
                flt.typed_config.Unpack(hcm)
                found.append(hcm)
    return found


def _rds_names(lst: listener_pb2.Listener) -> list[str]:
    return [hcm.rds.route_config_name for hcm in _connection_managers(lst) if hcm.HasField("rds")]


def _inline_route_clusters(lst: listener_pb2.Listener) -> list[str]:
    """The clusters an attempt listener's own routes name."""
    return [c for hcm in _connection_managers(lst) if hcm.HasField("route_config")
            for c in _route_clusters(hcm.route_config)]


def _internal_listeners(cluster: cluster_pb2.Cluster) -> list[str]:
    """The internal listeners a cluster's endpoints are (an attempt listener)."""
    return [lb.endpoint.address.envoy_internal_address.server_listener_name
            for locality in cluster.load_assignment.endpoints for lb in locality.lb_endpoints
            if lb.endpoint.address.HasField("envoy_internal_address")]


def _secret_names(lst: listener_pb2.Listener) -> list[str]:
    names = []
    for chain in lst.filter_chains:
        if not chain.HasField("transport_socket"):
            continue
        tls = tls_pb2.DownstreamTlsContext()
        quic = quic_transport_pb2.QuicDownstreamTransport()
        if chain.transport_socket.typed_config.Unpack(quic):
            tls = quic.downstream_tls_context
        else:
            chain.transport_socket.typed_config.Unpack(tls)
        names += [sds.name for sds in tls.common_tls_context.tls_certificate_sds_secret_configs]
    return names


def _route_clusters(rc: route_pb2.RouteConfiguration) -> list[str]:
    return [
        r.route.cluster
        for vh in rc.virtual_hosts
        for r in vh.routes
        if r.HasField("route") and r.route.cluster
    ]


# What every Hapax Envoy has from its bootstrap (hapax/envoy_process.py), not from a snapshot.
BOOTSTRAP_CLUSTERS = frozenset({wire.ENVOY_ADMIN_CLUSTER})


def check_consistency(snap: Snapshot) -> None:
    clusters = snap.of_type(CLUSTER)
    routable = clusters.keys() | BOOTSTRAP_CLUSTERS
    endpoints = snap.of_type(ENDPOINT)
    routes = snap.of_type(ROUTE)
    problems: list[str] = []
    for name, c in clusters.items():
        if c.type == cluster_pb2.Cluster.EDS and name not in endpoints:
            problems.append(f"cluster {name} uses EDS but has no ClusterLoadAssignment")
        for member in _aggregate_members(c):
            if member not in clusters:
                problems.append(f"aggregate cluster {name} names missing cluster {member}")
    for name in endpoints:
        if name not in clusters:
            problems.append(f"ClusterLoadAssignment {name} has no cluster")
    secrets, listeners = snap.of_type(SECRET), snap.of_type(LISTENER)
    for name, c in clusters.items():
        problems += [f"cluster {name} names missing internal listener {lst}"
                     for lst in _internal_listeners(c) if lst not in listeners]
    for name, lst in listeners.items():
        problems += [f"listener {name} names missing route configuration {r}"
                     for r in _rds_names(lst) if r not in routes]
        problems += [f"listener {name} names missing secret {s}"
                     for s in _secret_names(lst) if s not in secrets]
        problems += [f"listener {name} routes to missing cluster {c}"
                     for c in _inline_route_clusters(lst) if c not in routable]
    for name, rc in routes.items():
        problems += [f"route configuration {name} names missing cluster {c}"
                     for c in _route_clusters(rc) if c not in routable]
    for rt in snap.of_type(RUNTIME).values():
        problems += _runtime_problems(rt, clusters)
    if problems:
        raise InconsistentSnapshot(problems)


def _runtime_problems(rt: runtime_pb2.Runtime, clusters: Mapping[str, message.Message]) -> list[str]:
    problems = [f"runtime chain {ch.cluster} has no cluster"
                for ch in rt.chains if ch.cluster not in clusters]
    problems += [f"runtime provider {p.name} has no cluster {p.cluster}"
                 for p in rt.providers if p.cluster not in clusters]
    known = {p.name for p in rt.providers}
    problems += [f"runtime chain {ch.cluster} names unknown provider {p}"
                 for ch in rt.chains for p in ch.providers if p not in known]
    return problems
