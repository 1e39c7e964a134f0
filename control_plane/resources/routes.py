"""The route configuration, ``hapax_routes``: what Envoy does with each client request.

In order: ``GET /health`` to ext_proc's HTTP side (405 for any other method);
for each configured route, its experiments' routes (experiments.py), the passthrough
lane's routes, the model lane's,
then the ordinary provider route (whose cluster the router step names in the
``x-hapax-chain`` header) and a 405; last, a 404 in OpenAI's error shape that names
the paths served, as many as fit in a body Envoy accepts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.extensions.router.cluster_specifiers.lua.v3 import lua_pb2 as lua_cluster_pb2
from google.protobuf import any_pb2, wrappers_pb2

from control_plane.config.model import HapaxConfig, RouteConfig
from control_plane.plan import Plan
from control_plane.protobuf import duration, pack
from control_plane.resources import admission, client_keys, experiments, model_lane, passthrough, regional
from control_plane.resources.ext_proc_filters import per_route_ext_proc, router_mode
from control_plane.resources.listeners import alt_svc
from control_plane.resources.names import (
    EXT_PROC_HTTP_CLUSTER,
    HEALTH_PATH,
    MAX_DIRECT_RESPONSE_BYTES,
    METADATA_NAMESPACE,
    ROUTE_CONFIG_NAME,
    direct_json,
    error_body,
    json_headers,
    method_is,
)
from control_plane.resources.stats import route_stat_prefix, stats_label_keys
from hapax import wire

# Keyed by the config's handler names (a wire.Handler is one).
HANDLER_METHODS: dict[str, str] = {
    wire.Handler.CHAT: "POST", wire.Handler.COMPLETION: "POST", wire.Handler.EMBEDDINGS: "POST",
    wire.Handler.MODELS: "GET", wire.Handler.MESSAGES: "POST", wire.Handler.RESPONSES: "POST",
    wire.Handler.COUNT_TOKENS: "POST"}

# The 404 names what is served while it fits, then counts the rest: hundreds of department
# routes do not fit in a body Envoy accepts (names.py). Half its cap leaves the JSON room to
# spare and still names a dozen long paths or some fifty short ones, more than anyone reads.
NOT_FOUND_BODY_BYTES = MAX_DIRECT_RESPONSE_BYTES // 2
ROUTER_CHAIN_PLUGIN = "hapax.router.chain"
_NOT_FOUND = ("invalid_request_error", "unknown_url")

# Every attempt asks its provider for an uncompressed answer, whatever the client accepts:
# ext_proc reads and translates answers and json_to_metadata reads their usage, and neither
# can read a compressed body. Set on the provider route, so the lanes (copies of it) and
# every retry (Envoy hands it the same headers) ask the same; the client's own
# Accept-Encoding is for Envoy's compressor to honour (listeners.py).
PROVIDER_ACCEPT_ENCODING = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="accept-encoding", value="identity"),
    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


def _route_metadata(route: RouteConfig) -> base_pb2.Metadata:
    md = base_pb2.Metadata()
    md.filter_metadata[METADATA_NAMESPACE].update(
        {wire.RouteKey.HANDLER: route.handler, wire.RouteKey.VERSION: route.version, wire.RouteKey.ROUTE: route.path,
         **dict(route.metrics_labels)}
    )
    return md


def _retry_policy(plan: Plan) -> route_components_pb2.RetryPolicy:
    # Enough attempts for the longest chain; the router step narrows it to the
    # request's own chain with x-envoy-max-retries.
    config, longest_chain = plan.config, plan.longest_chain
    retries = max(config.retry.max_attempts or longest_chain, longest_chain, 2) - 1
    return route_components_pb2.RetryPolicy(
        retry_on="connect-failure,refused-stream,reset,5xx,retriable-status-codes",
        # A provider's 404 is its base_url or model (the gateway answers unknown models itself):
        # a failed attempt, as ext_proc's 502 for it is. Here for the answers ext_proc never reads.
        retriable_status_codes=[429, 404],
        num_retries=wrappers_pb2.UInt32Value(value=retries),
        # A provider silent for its whole timeout (before its first byte, or
        # between chunks) fails the attempt; before the first byte, that fails over.
        # One limit for every attempt, the longest timeout: an attempt on a provider
        # with a shorter one is held to it on the way (attempts.py).
        per_try_idle_timeout=duration(plan.longest_timeout),
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=duration(config.retry.backoff_base),
            max_interval=duration(config.retry.backoff_max),
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


def router_chain_plugin(plan: Plan) -> route_components_pb2.ClusterSpecifierPlugin:
    """The router step's routes' cluster: the chain the step names (``x-hapax-chain``), and until it has,
    the first chain.

    Not the header alone (``cluster_header``): a route without a cluster yet is one Envoy's rate
    limit filters pass by without a word, and those are the limit and queue checks, which run
    before the router step. With ``cluster_header`` every request the router step routes (``auto``,
    a ``dedup`` route, another API translated) went unchecked. The step sets the header and clears
    the route cache, and the request goes to the chain it named; a chain it names that does not
    exist is still Envoy's "cluster not found"."""
    source = (f"function envoy_on_route(route_handle)\n"
              f"  return route_handle:headers():get(\"{wire.CHAIN_HEADER}\") or \"{plan.default_chain.cluster}\"\n"
              f"end\n")
    config = lua_cluster_pb2.LuaConfig(source_code=base_pb2.DataSource(inline_string=source),
                                       default_cluster=plan.default_chain.cluster)
    return route_components_pb2.ClusterSpecifierPlugin(extension=core_extension_pb2.TypedExtensionConfig(
        name=ROUTER_CHAIN_PLUGIN, typed_config=pack(config)))


def provider_route(plan: Plan, route: RouteConfig, label_keys: tuple[str, ...] = (),
                   retry_policy: route_components_pb2.RetryPolicy | None = None) -> route_components_pb2.Route:
    """``retry_policy``: ``_retry_policy(plan)``, when the caller has built it once for many routes."""
    method = HANDLER_METHODS[route.handler]
    return route_components_pb2.Route(
        name=f"{route.handler}:{route.path}",
        match=route_components_pb2.RouteMatch(path=route.path, headers=method_is(method)),
        route=route_components_pb2.RouteAction(
            cluster_specifier_plugin=ROUTER_CHAIN_PLUGIN,
            # Generations can stream for minutes: bound idleness, not total time.
            # Each attempt has its own idle limit; the client's stream may sit idle
            # through every attempt of the chain before the first byte (any chain here:
            # the router step names it; a lane's route has its own chain's limit).
            timeout=duration(0),
            idle_timeout=duration(plan.any_chain_idle_limit),
            retry_policy=retry_policy or _retry_policy(plan),
        ),
        metadata=_route_metadata(route),
        stat_prefix=route_stat_prefix(route, label_keys),
        typed_per_filter_config=per_route_ext_proc(router_mode(route.handler), first_worker=route.dedup != "off"),
        request_headers_to_add=[PROVIDER_ACCEPT_ENCODING],
    )


def method_not_allowed_route(path: str, method: str) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=f"405:{path}",
        match=route_components_pb2.RouteMatch(path=path),
        direct_response=direct_json(
            405,
            # Not the path: the client has it, and a path is as long as the config makes it,
            # while Envoy caps this body (names.py).
            f"Method not allowed: this path accepts {method} only.",
            "invalid_request_error",
            "method_not_allowed",
        ),
        response_headers_to_add=json_headers({"allow": method}),
        typed_per_filter_config=per_route_ext_proc(None),
    )


def health_route(config: HapaxConfig) -> route_components_pb2.Route:
    """Anyone may ask whether the gateway is up: no key needed."""
    return route_components_pb2.Route(
        name="health",
        match=route_components_pb2.RouteMatch(path=HEALTH_PATH, headers=method_is("GET")),
        route=route_components_pb2.RouteAction(cluster=EXT_PROC_HTTP_CLUSTER, timeout=duration(5)),
        typed_per_filter_config={**per_route_ext_proc(None), **client_keys.no_key_needed(config),
                                 **admission.not_admitted_here(config)},
    )


def not_found_route(config: HapaxConfig) -> route_components_pb2.Route:
    served = sorted({r.path for r in config.routes} | {HEALTH_PATH})
    return route_components_pb2.Route(
        name="404",
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=direct_json(404, _not_found_message(served), *_NOT_FOUND),
        response_headers_to_add=json_headers(),
        typed_per_filter_config=per_route_ext_proc(None),
    )


def _not_found_message(paths: Sequence[str], max_bytes: int = NOT_FOUND_BODY_BYTES) -> str:
    """Every path, when the 404's JSON holds them in ``max_bytes``; else the first that fit and a count."""
    def fits(message: str) -> bool:
        return len(error_body(message, *_NOT_FOUND).encode()) <= max_bytes

    every = f"Unknown request URL. This gateway serves: {', '.join(paths)}."
    if fits(every):
        return every
    # Each path named adds more bytes than the shorter count saves: the first misfit ends it.
    shown = 0
    while shown < len(paths) and fits(_first_paths(paths, shown + 1)):
        shown += 1
    return _first_paths(paths, shown)


def _first_paths(paths: Sequence[str], shown: int) -> str:
    listed = f": {', '.join(paths[:shown])} and {len(paths) - shown} more" if shown else ""
    return (f"Unknown request URL. This gateway serves {len(paths)} paths{listed} "
            "(the gateway's configuration names them all).")


def route_configuration(plan: Plan, label_keys: tuple[str, ...] | None = None,
                        version: str = "") -> route_pb2.RouteConfiguration:
    """``version``: the runtime version the model lane's requests start under (model_lane.py)."""
    config = plan.config
    keys = stats_label_keys(config) if label_keys is None else label_keys
    routes = [health_route(config), method_not_allowed_route(HEALTH_PATH, "GET")]
    lane_paths = set()
    # What every department route shares, built once: hundreds of routes copy it.
    retry_policy, ext_proc_off = _retry_policy(plan), per_route_ext_proc(None)
    passthrough_groups, model_groups = passthrough.lane_groups(plan), model_lane.model_groups(plan)
    for route in config.routes:
        base = provider_route(plan, route, keys, retry_policy)
        # A route that coalesces requests takes no lane: identical requests meet in the router step
        # (which assigns an experiment's requests itself). An experiment's route goes first; a pinned
        # department's requests are in no experiment (a variant's chain would leave its region).
        pinned = regional.pinned_region(config, route)
        lanes = [] if route.dedup != "off" else [
            *(experiments.experiment_routes(plan, route.path, base, version, ext_proc_off) if pinned is None else ()),
            *passthrough.lane_routes(plan, passthrough_groups, route.handler, base, ext_proc_off),
            *model_lane.model_routes(plan, model_groups, route.handler, base, version, ext_proc_off)]
        if pinned is not None:  # a pinned department's lanes take its region's lookups
            for variant in lanes:
                regional.pin(plan, variant, pinned, route.handler)
        for name, checked in admission.route_admission(config, route).items():
            for variant in (*lanes, base):  # a limited department's route: every request is checked
                variant.typed_per_filter_config[name].CopyFrom(checked)
        for name, off in admission.not_queued(config, route).items():  # a dedup route has no lanes
            base.typed_per_filter_config[name].CopyFrom(off)
        if lanes or (config.reads_request_bodies and route.handler != wire.Handler.MODELS):
            lane_paths.add(route.path)  # its body is read: to pick a lane, to check or reserve by its fields
        routes += [*lanes, base]
        routes.append(method_not_allowed_route(route.path, HANDLER_METHODS[route.handler]))
    routes.append(not_found_route(config))
    if lane_paths:
        _read_bodies_only_on(lane_paths, routes)
    shared = share_retry_policy(routes)
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        # The lanes' model -> cluster lookups, once for every department route.
        cluster_specifier_plugins=[router_chain_plugin(plan), *passthrough.lane_clusters(plan),
                                   *model_lane.model_clusters(plan)],
        virtual_hosts=[route_components_pb2.VirtualHost(
            name="hapax", domains=["*"], routes=routes, retry_policy=shared,
            typed_per_filter_config={**share_filter_configs(routes), **client_keys.virtual_host_keys(config)},
            # Lets the upstream step tell a first attempt from a retry (metrics).
            include_request_attempt_count=True,
            response_headers_to_add=alt_svc(config),
            # The mark on an attempt listener's answers is for the upstream step only (attempts.py).
            response_headers_to_remove=[wire.GATEWAY_ANSWER_HEADER])],
    )


def _read_bodies_only_on(lane_paths: set[str], routes: list[route_components_pb2.Route]) -> None:
    # Only a lane route and the ordinary route it is a variant of need the body's fields.
    for r in routes:
        if not (r.HasField("route") and r.match.path in lane_paths):
            for name, config_any in passthrough.body_filters_disabled().items():
                r.typed_per_filter_config[name].CopyFrom(config_any)


def share_retry_policy(routes: list[route_components_pb2.Route]) -> route_components_pb2.RetryPolicy | None:
    """The retry policy most routes carry, for the virtual host; the routes that carry it drop it.

    A config's lane routes are its department routes times its models, and each held the
    same retry policy: about a quarter of the route configuration's bytes, and of Envoy's
    time to load it (bench/scale.py). Envoy applies the virtual host's policy to a route
    without one of its own, and a route's own replaces it whole; so a route that had none
    (the health route) gets an explicit empty one, which retries nothing, as before.
    """
    actions = [r.route for r in routes if r.HasField("route")]
    counts = Counter(a.retry_policy.SerializeToString(deterministic=True)
                     for a in actions if a.HasField("retry_policy"))
    if not counts:
        return None
    common = counts.most_common(1)[0][0]
    for action in actions:
        if not action.HasField("retry_policy"):
            action.retry_policy.SetInParent()  # no retries, rather than the virtual host's
        elif action.retry_policy.SerializeToString(deterministic=True) == common:
            action.ClearField("retry_policy")
    return route_components_pb2.RetryPolicy.FromString(common)


def share_filter_configs(routes: list[route_components_pb2.Route]) -> dict[str, any_pb2.Any]:
    """Per filter that every route configures: its most common config, for the virtual host;
    the routes that carry it drop it.

    Every route says whether ext_proc runs on it, most of them (the lane routes) that it
    does not: a tenth of the route configuration's bytes. Only a filter every route
    configures moves: a route without a config of its own would otherwise take the virtual
    host's. A route that keeps its own is the more specific; for ext_proc the two are merged
    and the virtual host's holds nothing but ``disabled``, which the route's own decides.
    """
    shared = {}
    for name in set.intersection(*(set(r.typed_per_filter_config) for r in routes)) if routes else ():
        counts = Counter(r.typed_per_filter_config[name].SerializeToString(deterministic=True) for r in routes)
        common = counts.most_common(1)[0][0]
        for r in routes:
            if r.typed_per_filter_config[name].SerializeToString(deterministic=True) == common:
                del r.typed_per_filter_config[name]
        shared[name] = any_pb2.Any.FromString(common)
    return shared
