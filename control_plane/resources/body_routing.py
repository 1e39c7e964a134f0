"""Routes Envoy picks from the body: what the passthrough and model lanes share.

json_to_metadata reads ``model`` and ``stream`` from a request's body into dynamic
metadata (passthrough.py); a lane route matches the set of its models and the
``stream`` values it serves, and names a cluster specifier that looks the cluster up
by the model: one table per lane and family for the whole configuration, so a
department route has a handful of lane routes whatever the number of models (a
route per model and department made 205,319 Envoy routes at 100 providers and
1,000 routes: bench/results-scale.md).

The lookup reads the model from filter state, where ``lane_model_filter`` copies it
(set_filter_state): Envoy 1.40's matcher cluster specifier crashed (SIGSEGV) on a
dynamic-metadata input, and reads filter state as a string.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2 as filter_state_value_pb2
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.router.cluster_specifiers.matcher.v3 import matcher_pb2 as cluster_matcher_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from google.protobuf import any_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from control_plane.plan import Chain, Plan
from control_plane.protobuf import duration, pack
from hapax import wire

REQUEST_NAMESPACE = wire.REQUEST_NAMESPACE
METADATA_NAMESPACE = wire.METADATA_NAMESPACE
# The body's model again, as filter state: what the lane routes' cluster lookups read.
LANE_MODEL_FILTER = "hapax.lane_model"
MODEL_FILTER_STATE = "hapax.model"
T = TypeVar("T")


def lane_model_filter() -> hcm_pb2.HttpFilter:
    """Copies the model json_to_metadata read (a string; nothing else) into filter state, for the
    lane routes' cluster specifiers. After json_to_metadata, before any filter that looks up the route."""
    model = substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=f"%DYNAMIC_METADATA({REQUEST_NAMESPACE}:{wire.BODY_MODEL})%"),
        omit_empty_values=True)
    config = set_filter_state_pb2.Config(on_request_headers=[filter_state_value_pb2.FilterStateValue(
        object_key=MODEL_FILTER_STATE, factory_key="envoy.string", format_string=model, skip_if_empty=True)])
    return hcm_pb2.HttpFilter(name=LANE_MODEL_FILTER, typed_config=pack(config))


@dataclass(frozen=True)
class LaneGroup:
    """The models one body-routed route takes: of one family, whose chains share what a route
    fixes (``route_limits``) and, on the passthrough lane, their API base path."""

    family: str
    models: tuple[str, ...]
    chain: Chain  # any of the models' chains: the route's attempts and idle limit are each one's
    base_path: str = ""
    api: str = "openai"  # the passthrough lane's: what the body is and its providers take (plan.LaneModel)

    @cached_property  # one per group, copied into every department's route
    def model_matcher(self) -> metadata_pb2.MetadataMatcher:
        names = [value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=m)) for m in self.models]
        if len(names) == 1:
            return metadata_matcher(wire.BODY_MODEL, string_match=names[0].string_match)
        return metadata_matcher(wire.BODY_MODEL, or_match=value_pb2.OrMatcher(value_matchers=names))


def route_limits(plan: Plan, chain: Chain) -> tuple[int, float]:
    """What a body-routed route fixes of its chain: the attempts and the idle limit."""
    return chain.attempts, plan.route_idle_limit([chain])


def grouped(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """``items`` by ``key``, in the order each key first appears."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def cluster_plugin_name(lane: str, family: str) -> str:
    return f"hapax.{lane}.{family}"


def cluster_plugin(name: str, clusters: Mapping[str, str] | matcher_pb2.Matcher
                   ) -> route_components_pb2.ClusterSpecifierPlugin:
    """A lookup of the cluster by the body's model (filter state ``MODEL_FILTER_STATE``): one hash
    lookup per request, and one entry per model in the whole configuration. (With regions, a
    matcher of such lookups: regional.py.)"""
    matcher = clusters if isinstance(clusters, matcher_pb2.Matcher) else model_matcher(clusters)
    return route_components_pb2.ClusterSpecifierPlugin(extension=core_extension_pb2.TypedExtensionConfig(
        name=name, typed_config=pack(cluster_matcher_pb2.MatcherClusterSpecifier(cluster_matcher=matcher))))


def model_matcher(clusters: Mapping[str, str]) -> matcher_pb2.Matcher:
    """The body's model -> its cluster."""
    def action(cluster: str) -> matcher_pb2.Matcher.OnMatch:
        return matcher_pb2.Matcher.OnMatch(action=extension_pb2.TypedExtensionConfig(
            name=cluster, typed_config=pack(cluster_matcher_pb2.ClusterAction(cluster=cluster))))

    model = extension_pb2.TypedExtensionConfig(
        name="model", typed_config=pack(network_inputs_pb2.FilterStateInput(key=MODEL_FILTER_STATE)))
    return matcher_pb2.Matcher(matcher_tree=matcher_pb2.Matcher.MatcherTree(
        input=model, exact_match_map=matcher_pb2.Matcher.MatcherTree.MatchMap(
            map={name: action(cluster) for name, cluster in clusters.items()})))


def body_routed(plan: Plan, base: route_components_pb2.Route, lane: str, group: LaneGroup, *,
                stream: bool | None, disabled_ext_proc: dict[str, any_pb2.Any]) -> route_components_pb2.Route:
    """A copy of ``base`` that Envoy picks when the body's ``model`` is one of the group's and its
    ``stream`` is ``stream`` (None: either boolean), and sends to the cluster the lane's lookup
    gives for the model, without the router step (what that step does, the route does)."""
    route = route_components_pb2.Route()
    route.CopyFrom(base)
    route.name = f"{lane}:{base.name}"
    route.match.dynamic_metadata.add().CopyFrom(group.model_matcher)
    route.match.dynamic_metadata.append(stream_matcher(stream))
    action = route.route
    action.ClearField("cluster_header")
    action.cluster_specifier_plugin = cluster_plugin_name(lane, group.family)
    chain = group.chain
    action.retry_policy.num_retries.value = chain.attempts - 1
    action.idle_timeout.CopyFrom(duration(plan.route_idle_limit([chain])))
    route.request_headers_to_remove.extend(wire.REMOVED_REQUEST_HEADERS)
    route.metadata.filter_metadata[METADATA_NAMESPACE].update({wire.RouteKey.LANE: lane})
    route.typed_per_filter_config.clear()
    for name, config_any in disabled_ext_proc.items():
        route.typed_per_filter_config[name].CopyFrom(config_any)
    return route


def stream_matcher(stream: bool | None) -> metadata_pb2.MetadataMatcher:
    if stream is not None:
        return metadata_matcher(wire.BODY_STREAM, bool_match=stream)
    either = [value_pb2.ValueMatcher(bool_match=b) for b in (True, False)]  # a boolean: not "yes", not null
    return metadata_matcher(wire.BODY_STREAM, or_match=value_pb2.OrMatcher(value_matchers=either))


def metadata_matcher(key: str, **value) -> metadata_pb2.MetadataMatcher:
    return metadata_pb2.MetadataMatcher(
        filter=REQUEST_NAMESPACE, path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
        value=value_pb2.ValueMatcher(**value))


