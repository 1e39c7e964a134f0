"""Geographic routing (``regions:``), in Envoy: where a request comes from picks its chain.

- The region header (``regions.header``) is honoured only from ``trusted_sources`` (the edge
  or CDN in front of the gateway): from any other peer a ``header_mutation`` filter removes it,
  skipped (an ``ExtensionWithMatcher`` on the peer's address) for a trusted one.
- With ``regions.geoip``, the country header is removed from every request and Envoy's geoip
  filter (MaxMind provider) sets it from the client's address.
- The lanes' cluster lookups (body_routing.py: the body's model -> its cluster) become a
  matcher of lookups, one per region view (plan.RegionView): the pinned clients' key ids
  first (a client's department pinned to a region), then the region header, then the country
  header (mapped to its region), else the home region's lookup, which is the plain one. A route
  of a pinned department has a lookup of its own: the pinned region's, whatever the header says
  (a pinned client's own pin still comes first).
- The router step picks the same way from the runtime's views (ext_proc/runtime.py).

A config without ``regions:`` gets none of this: its resources are what they always were.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.geoip.v3 import geoip_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.geoip_providers.common.v3 import common_pb2 as geoip_common_pb2
from envoy.extensions.geoip_providers.maxmind.v3 import maxmind_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.matching.input_matchers.ip.v3 import ip_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import wrappers_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import regex_pb2 as xds_regex_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from control_plane.config.model import HapaxConfig, RegionsConfig, RouteConfig
from control_plane.plan import Plan, region_view_key
from control_plane.protobuf import pack
from control_plane.resources.body_routing import model_matcher
from hapax import wire

UNTRUSTED_REGION_FILTER = "hapax.region_untrusted"
COUNTRY_FILTER = "hapax.geo_country_removed"
GEOIP_FILTER = "hapax.geoip"


def pinned_region(config: HapaxConfig, route: RouteConfig) -> str | None:
    """The region a route's department is pinned to (``regions.residency``), if any."""
    if config.regions is None:
        return None
    department = route.metrics_labels.get("department")
    return config.regions.residency.get(department) if department else None


def pinned_clients(config: HapaxConfig) -> dict[str, str]:
    """Key id -> the region its client's department is pinned to."""
    if config.regions is None:
        return {}
    residency = config.regions.residency
    return {line.key_id: residency[department]
            for client in (config.clients or {}).values()
            if (department := client.department_name) is not None and department in residency
            for line in client.keys}


def residency(config: HapaxConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Pinned region -> (its departments, its pinned clients' key ids): whose requests stay there."""
    if config.regions is None:
        return {}
    out: dict[str, tuple[list[str], list[str]]] = {}
    for department, region in config.regions.residency.items():
        out.setdefault(region, ([], []))[0].append(department)
    for key_id, region in pinned_clients(config).items():
        out[region][1].append(key_id)
    return out


def plugin_suffix(region: str) -> str:
    return "@" + region_view_key(region, pinned=True)


def pin(plan: Plan, route: route_components_pb2.Route, region: str, handler: str) -> None:
    """A lane route of a department pinned to ``region``: its region's lookups, and its region's
    chains' attempts (fewer providers: a retry beyond them would only go round them again)."""
    route.route.cluster_specifier_plugin += plugin_suffix(region)
    chain = plan.views[region_view_key(region, True)].auto_chains.get(wire.FAMILY_OF_HANDLER[wire.Handler(handler)])
    if chain is not None:
        route.route.retry_policy.num_retries.value = chain.attempts - 1


def regional_lookups(plan: Plan, name: str, clusters: Callable[[str | None], Mapping[str, str]]
                     ) -> dict[str, matcher_pb2.Matcher]:
    """The lookup ``name`` and, per pinned region, ``name@<region>.only``: each a matcher of
    ``clusters(view key)`` (None: the home region's, the plain lookup's)."""
    regions = plan.config.regions
    assert regions is not None
    views = {key: model_matcher(clusters(key)) for key in plan.views}
    home = model_matcher(clusters(None))
    by_region = _header_tree(regions.header, {r: views[r] for r in regions.names},
                             _by_country(regions, views, home))
    clients = pinned_clients(plan.config)
    out = {name: _by_key_id(clients, views, by_region)}
    for region in dict.fromkeys(regions.residency.values()):
        out[name + plugin_suffix(region)] = _by_key_id(clients, views, views[region_view_key(region, True)])
    return out


def _by_country(regions: RegionsConfig, views: Mapping[str, matcher_pb2.Matcher],
                home: matcher_pb2.Matcher) -> matcher_pb2.Matcher:
    if regions.geoip is None:
        return home
    return _header_tree(wire.GEO_COUNTRY_HEADER,
                        {code: views[region] for code, region in regions.geoip.countries.items()}, home)


def _by_key_id(clients: Mapping[str, str], views: Mapping[str, matcher_pb2.Matcher],
               otherwise: matcher_pb2.Matcher) -> matcher_pb2.Matcher:
    """A pinned client's requests take its region's pinned lookup, wherever they come from: one
    matcher per pinned region (its clients' key ids in one expression), so the lookup grows with
    keys plus models, not their product."""
    if not clients:
        return otherwise
    by_region: dict[str, list[str]] = {}
    for key_id, region in clients.items():
        by_region.setdefault(region, []).append(key_id)
    key_id = extension_pb2.TypedExtensionConfig(
        name=wire.KEY_ID_HEADER, typed_config=pack(http_inputs_pb2.HttpRequestHeaderMatchInput(
            header_name=wire.KEY_ID_HEADER)))
    matchers = [matcher_pb2.Matcher.MatcherList.FieldMatcher(
        predicate=matcher_pb2.Matcher.MatcherList.Predicate(
            single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
                input=key_id, value_match=xds_string_pb2.StringMatcher(safe_regex=xds_regex_pb2.RegexMatcher(
                    google_re2=xds_regex_pb2.RegexMatcher.GoogleRE2(),
                    # Key ids are hex digits: nothing in them needs escaping.
                    regex=f"^(?:{'|'.join(ids)})$")))),
        on_match=matcher_pb2.Matcher.OnMatch(matcher=views[region_view_key(region, True)]))
        for region, ids in by_region.items()]
    return matcher_pb2.Matcher(matcher_list=matcher_pb2.Matcher.MatcherList(matchers=matchers),
                               on_no_match=matcher_pb2.Matcher.OnMatch(matcher=otherwise))


def _header_tree(header: str, by_value: Mapping[str, matcher_pb2.Matcher],
                 otherwise: matcher_pb2.Matcher) -> matcher_pb2.Matcher:
    header_input = extension_pb2.TypedExtensionConfig(
        name=header, typed_config=pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=header)))
    return matcher_pb2.Matcher(
        matcher_tree=matcher_pb2.Matcher.MatcherTree(
            input=header_input, exact_match_map=matcher_pb2.Matcher.MatcherTree.MatchMap(
                map={value: matcher_pb2.Matcher.OnMatch(matcher=m) for value, m in by_value.items()})),
        on_no_match=matcher_pb2.Matcher.OnMatch(matcher=otherwise))


# ---------------------------------------------------------------- the listener's filters


def region_filters(config: HapaxConfig) -> list[hcm_pb2.HttpFilter]:
    """Before anything reads the region: the untrusted peers' region header removed, then (with
    ``geoip``) the client's country header removed and set again from its address."""
    regions = config.regions
    if regions is None:
        return []
    filters = [_untrusted_region_filter(regions)]
    if regions.geoip is not None:
        filters += [_remove_filter(COUNTRY_FILTER, wire.GEO_COUNTRY_HEADER), _geoip_filter(regions)]
    return filters


def _mutations(header: str) -> header_mutation_pb2.HeaderMutation:
    return header_mutation_pb2.HeaderMutation(mutations=header_mutation_pb2.Mutations(
        request_mutations=[mutation_rules_pb2.HeaderMutation(remove=header)]))


def _remove_filter(name: str, header: str) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(_mutations(header)))


def _untrusted_region_filter(regions: RegionsConfig) -> hcm_pb2.HttpFilter:
    """Removes the region header, unless the peer (the connection's own address, not a header's)
    is in ``trusted_sources``."""
    remove = core_extension_pb2.TypedExtensionConfig(name="remove_region",
                                                     typed_config=pack(_mutations(regions.header)))
    if not regions.trusted_sources:
        return hcm_pb2.HttpFilter(name=UNTRUSTED_REGION_FILTER, typed_config=remove.typed_config)
    peer = extension_pb2.TypedExtensionConfig(name="peer", typed_config=pack(network_inputs_pb2.DirectSourceIPInput()))
    trusted = extension_pb2.TypedExtensionConfig(name="trusted_sources", typed_config=pack(ip_pb2.Ip(
        stat_prefix="hapax_region_trusted", cidr_ranges=[_cidr(cidr) for cidr in regions.trusted_sources])))
    skip = matcher_pb2.Matcher.OnMatch(action=extension_pb2.TypedExtensionConfig(
        name="skip", typed_config=pack(skip_action_pb2.SkipFilter())))
    predicate = matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(input=peer, custom_match=trusted))
    matcher = matcher_pb2.Matcher(matcher_list=matcher_pb2.Matcher.MatcherList(matchers=[
        matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=predicate, on_match=skip)]))
    wrapped = extension_matcher_pb2.ExtensionWithMatcher(extension_config=remove, xds_matcher=matcher)
    return hcm_pb2.HttpFilter(name=UNTRUSTED_REGION_FILTER, typed_config=pack(wrapped))


def _cidr(text: str) -> address_pb2.CidrRange:
    network = ipaddress.ip_network(text, strict=False)
    return address_pb2.CidrRange(address_prefix=str(network.network_address),
                                 prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen))


def _geoip_filter(regions: RegionsConfig) -> hcm_pb2.HttpFilter:
    """The client's country (the connection's peer: the gateway appends no x-forwarded-for and
    trusts none) into GEO_COUNTRY_HEADER, from the MaxMind database."""
    assert regions.geoip is not None
    provider = maxmind_pb2.MaxMindConfig(
        country_db_path=regions.geoip.database,
        common_provider_config=geoip_common_pb2.CommonGeoipProviderConfig(
            geo_headers_to_add=geoip_common_pb2.CommonGeoipProviderConfig.GeolocationHeadersToAdd(
                country=wire.GEO_COUNTRY_HEADER)))
    config = geoip_pb2.Geoip(provider=core_extension_pb2.TypedExtensionConfig(
        name="envoy.geoip_providers.maxmind", typed_config=pack(provider)))
    return hcm_pb2.HttpFilter(name=GEOIP_FILTER, typed_config=pack(config))
