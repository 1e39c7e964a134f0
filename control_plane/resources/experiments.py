"""A/B model experiments as Envoy routes: weighted clusters, sticky by a hash Envoy computes.

An experiment (config ``experiments``) takes the chat requests naming its model (or every chat
request of its routes) on a route of its own, before the lanes: a copy of the model lane's
route (the body's ``model`` read by json_to_metadata; no router step) whose action is a
``weighted_clusters`` over its variants' chain clusters. So a variant fails over along its own
provider's chain as any request does, and no Python runs to choose it.

Sticky: ``use_hash_policy`` makes Envoy pick the cluster by the route's hash policy rather than
at random: the xxHash64 of the experiment's sticky header, else of the checked client key's id
(the first terminal: a present header decides alone). Envoy takes that value modulo the total
weight and walks the clusters' weights in order. The weights are the variants' runs of
``wire.EXPERIMENT_BUCKETS`` buckets (ExperimentConfig.buckets), so the modulus never changes: a
new weight moves only the users whose bucket changes hands. A request with neither header is
assigned at random. The router step assigns the requests it routes (a route with ``dedup``,
a body Envoy could not read) with the same hash and buckets (ext_proc/experiments.py).

Each variant's cluster entry names the experiment and the variant in the request's headers,
for the upstream step (which sends the variant's provider the variant's model, and a provider
failed over to its own first chat model, as ``auto``), and in the answer's, for the client and
the access log, whose series and ledger records carry them as labels.
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, wrappers_pb2

from control_plane.config.model import ExperimentConfig
from control_plane.plan import Plan
from control_plane.protobuf import duration
from control_plane.resources import regional
from control_plane.resources.body_routing import METADATA_NAMESPACE, metadata_matcher, stream_matcher
from control_plane.resources.model_lane import step_headers
from control_plane.resources.names import set_header
from hapax import wire

EXPERIMENT_ROUTE_PREFIX = "experiment."
# The experiment route's cluster entries set these; the route's own removals run after them.
_SET_BY_ENTRY = (wire.EXPERIMENT_HEADER, wire.VARIANT_HEADER)


def experiment_routes(plan: Plan, route_path: str, base: route_components_pb2.Route, version: str,
                      disabled_ext_proc: dict[str, any_pb2.Any]) -> Iterator[route_components_pb2.Route]:
    """The experiments' variants of ``base`` (a chat or completion route), to go before its lanes."""
    for experiment in plan.experiments_on(route_path):
        yield _experiment_route(plan, experiment, base, version, disabled_ext_proc)


def _experiment_route(plan: Plan, experiment: ExperimentConfig, base: route_components_pb2.Route, version: str,
                      disabled_ext_proc: dict[str, any_pb2.Any]) -> route_components_pb2.Route:
    route = route_components_pb2.Route()
    route.CopyFrom(base)
    route.name = f"{EXPERIMENT_ROUTE_PREFIX}{experiment.name}:{base.name}"
    if experiment.model is not None:
        route.match.dynamic_metadata.append(metadata_matcher(
            wire.BODY_MODEL, string_match=string_pb2.StringMatcher(exact=experiment.model)))
    route.match.dynamic_metadata.append(stream_matcher(None))  # not a boolean: the router step says why
    pinned = regional.pinned_clients(plan.config)
    if pinned:  # a pinned department's client is in no experiment: a variant's chain would leave its region
        route.match.headers.append(route_components_pb2.HeaderMatcher(
            name=wire.KEY_ID_HEADER, invert_match=True, string_match=string_pb2.StringMatcher(
                safe_regex=regex_pb2.RegexMatcher(regex=f"^({'|'.join(sorted(pinned))})$"))))
    chains = [plan.variant_chain(v) for v in experiment.variants]
    action = route.route
    action.weighted_clusters.CopyFrom(route_components_pb2.WeightedCluster(
        clusters=[_entry(experiment.name, variant.name, chain.cluster, buckets)
                  for variant, chain, buckets in zip(experiment.variants, chains, experiment.buckets(), strict=True)
                  if buckets],
        use_hash_policy=wrappers_pb2.BoolValue(value=True)))
    action.hash_policy.extend(_sticky(experiment))
    action.retry_policy.num_retries.value = max(chain.attempts for chain in chains) - 1
    action.idle_timeout.CopyFrom(duration(plan.route_idle_limit(chains)))
    route.request_headers_to_remove.extend(h for h in wire.REMOVED_REQUEST_HEADERS if h not in _SET_BY_ENTRY)
    route.request_headers_to_add.extend(step_headers(version))
    route.metadata.filter_metadata[METADATA_NAMESPACE].update({wire.RouteKey.LANE: wire.Lane.MODEL})
    route.typed_per_filter_config.clear()
    for name, config_any in disabled_ext_proc.items():
        route.typed_per_filter_config[name].CopyFrom(config_any)
    return route


def _entry(experiment: str, variant: str, cluster: str,
           buckets: int) -> route_components_pb2.WeightedCluster.ClusterWeight:
    names = [set_header(wire.EXPERIMENT_HEADER, experiment), set_header(wire.VARIANT_HEADER, variant)]
    return route_components_pb2.WeightedCluster.ClusterWeight(
        name=cluster, weight=wrappers_pb2.UInt32Value(value=buckets),
        request_headers_to_add=names, response_headers_to_add=names)


def _sticky(experiment: ExperimentConfig) -> list[route_components_pb2.RouteAction.HashPolicy]:
    """The user's hash: its sticky header when the request has it, else its key's id."""
    def header(name: str) -> route_components_pb2.RouteAction.HashPolicy:
        return route_components_pb2.RouteAction.HashPolicy(
            header=route_components_pb2.RouteAction.HashPolicy.Header(header_name=name), terminal=True)

    return [*([header(experiment.sticky_header)] if experiment.sticky_header else []), header(wire.KEY_ID_HEADER)]
