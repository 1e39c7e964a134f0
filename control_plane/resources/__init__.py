"""Translates a control-plane ``Plan`` (a validated HapaxConfig) into xDS resources.

Envoy gets clusters, endpoints, secrets, three listeners and one route
configuration; ext_proc gets one ``hapax.v1.Runtime``. API keys go only into
the Runtime resource and the passthrough lane's key secrets: no listener,
route or cluster ever carries one.

Shape of the data plane (see docs/architecture.md):

- ``provider.<name>``: one cluster per provider, TLS with SNI for https. Its
  endpoint carries ``filter_metadata.hapax.provider`` so the upstream ext_proc
  step learns which provider an attempt goes to (``xds.upstream_host_metadata``).
- ``chain.<name>``: an aggregate cluster trying ``<name>`` first, then the rest of
  ``provider_preference`` serving the same model family (``chain.<name>.embeddings``
  when the embeddings chain differs from the chat chain). Upstream HTTP filters of an aggregate cluster are the
  ones Envoy runs (those of the member clusters are ignored), so the per-attempt
  ext_proc filter lives here.
- ``lane.<chain>``: the same chain for the passthrough lane's requests, whose
  per-attempt filter adds the key itself where the provider takes the body as it
  is (``passthrough``).
- The router-level ext_proc step reads the client request once, picks the chain
  and names it in the ``x-hapax-chain`` header, which the route's cluster
  specifier reads (``routes.router_chain_plugin``). A request whose body names a known model can skip it: the
  lanes' routes are picked from the body (``passthrough``, ``model_lane``).

Which module builds what (``control_plane.snapshot`` puts them together):

- ``names``: what the resources call each other by, ``Address``,
  ``ExtProcEndpoints``, and the small pieces several modules share;
- ``clusters``: provider, chain, lane and ext_proc clusters, load assignments;
- ``ext_proc_filters``: the router and upstream ext_proc filters, their
  processing modes and per-route overrides;
- ``routes``: the route configuration: provider routes, retry policy, health,
  404 and 405 routes;
- ``stats``: route stat prefixes and the bootstrap's stat tags;
- ``listeners``: the HTTP connection manager and the main, HTTP/3 and metrics
  listeners (local replies, credential-rejected answers, access log, alt-svc);
- ``secrets``: SDS secrets (certificates, lane keys), downstream TLS contexts;
- ``runtime``: ext_proc's ``hapax.v1.Runtime``;
- ``passthrough`` and ``model_lane``: the two lanes' routes and filters.

The names below are re-exported for the tests and callers that use
``resources.X``; the gateway's own modules import from the module that
builds a thing. (Not ``runtime.runtime``: the function would hide its module.)
"""

from control_plane.resources.clusters import (
    chain_cluster,
    ext_proc_grpc_cluster,
    ext_proc_http_cluster,
    lane_cluster,
    load_assignment,
    provider_cluster,
)
from control_plane.resources.ext_proc_filters import router_ext_proc_filter, upstream_ext_proc_filter
from control_plane.resources.listeners import http3_listener, http_connection_manager, listener, metrics_listener
from control_plane.resources.names import (
    EXT_PROC_CLUSTER,
    EXT_PROC_FILTER,
    EXT_PROC_HTTP_CLUSTER,
    HTTP3_LISTENER_NAME,
    LISTENER_NAME,
    METRICS_LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    UPSTREAM_EXT_PROC_FILTER,
    Address,
    ExtProcEndpoints,
)
from control_plane.resources.routes import route_configuration
from control_plane.resources.secrets import HTTP3_TLS_SECRET, TLS_SECRET, key_secrets, tls_secrets
from control_plane.resources.stats import envoy_stats_tags, route_stat_prefix, stats_label_keys

__all__ = [
    "EXT_PROC_CLUSTER",
    "EXT_PROC_FILTER",
    "EXT_PROC_HTTP_CLUSTER",
    "HTTP3_LISTENER_NAME",
    "HTTP3_TLS_SECRET",
    "LISTENER_NAME",
    "METRICS_LISTENER_NAME",
    "ROUTE_CONFIG_NAME",
    "TLS_SECRET",
    "UPSTREAM_EXT_PROC_FILTER",
    "Address",
    "ExtProcEndpoints",
    "chain_cluster",
    "envoy_stats_tags",
    "ext_proc_grpc_cluster",
    "ext_proc_http_cluster",
    "http3_listener",
    "http_connection_manager",
    "key_secrets",
    "lane_cluster",
    "listener",
    "load_assignment",
    "metrics_listener",
    "provider_cluster",
    "route_configuration",
    "route_stat_prefix",
    "router_ext_proc_filter",
    "stats_label_keys",
    "tls_secrets",
    "upstream_ext_proc_filter",
]
