"""Geographic routing (``regions:``): its validation, each region's chains, the Envoy lookups
and filters that pick them, and the router step's pick. The end-to-end proof, through the real
Envoy, is tests/e2e/test_regions_e2e.py."""

from __future__ import annotations

import pytest
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.matching.input_matchers.ip.v3 import ip_pb2

from control_plane.config import ConfigError, parse_config
from control_plane.plan import make_plan
from control_plane.resources import regional
from control_plane.resources.routes import ROUTER_CHAIN_PLUGIN
from control_plane.resources.runtime import runtime
from control_plane.snapshot import CLUSTER, LISTENER, ROUTE
from ext_proc.runtime import RuntimeView
from hapax import wire
from tests.snapshots import REGIONAL, SECRETS, effective_routes, regional_lookup, snapshot_of, with_geoip

EU, US, AP = "openai-eu", "openai-us", "openai-ap"
ADS_KEY_ID = "0123456789ab"
TWO = """\
providers:
  eu: {type: openai, model: m, base_url: "http://eu.example.com/v1", region: eu}
  us: {type: openai, model: m, base_url: "http://us.example.com/v1", region: us}
"""


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=SECRETS)
    return {issue.path: issue.message for issue in caught.value.issues}


@pytest.mark.parametrize(("text", "path", "reason"), [
    (TWO, "regions", "is required when providers have a region (eu, us)"),
    (TWO.replace("region: eu}", "region: EU}"), "providers.eu.region", "invalid region name 'EU'"),
    (TWO.replace(", region: eu", "").replace(", region: us", "") + "regions: {home: eu}\n", "regions",
     "no provider has a region"),
    (TWO + "regions: {header: x-region}\n", "regions.home", "is required"),
    (TWO + "regions: {home: mars}\n", "regions.home", "unknown region 'mars': no provider has it"),
    (TWO + "regions: {home: us, hme: us}\n", "regions.hme", "unknown key 'hme'"),
    (TWO + "regions: {home: us, header: x-envoy-region}\n", "regions.header", "expected a header name"),
    (TWO + "regions: {home: us, header: authorization}\n", "regions.header", "expected a header name"),
    (TWO + "regions: {home: us, trusted_sources: [10.0.0.0/33]}\n", "regions.trusted_sources[0]",
     "expected an IP address or a CIDR range"),
    (TWO + "regions: {home: us, failover: {eu: [eu]}}\n", "regions.failover.eu[0]",
     "a region does not fail over to itself"),
    (TWO + "regions: {home: us, failover: {eu: [us, us]}}\n", "regions.failover.eu[1]", "listed twice"),
    (TWO + "regions: {home: us, failover: {eu: [ap]}}\n", "regions.failover.eu[0]", "unknown region 'ap'"),
    (TWO + "regions: {home: us, residency: {ads: ap}}\n", "regions.residency.ads", "unknown region 'ap'"),
    (TWO + "regions: {home: us, geoip: {database: /nonexistent.mmdb, countries: {DE: eu}}}\n",
     "regions.geoip.database", "no such file"),
    (TWO + "regions: {home: us, geoip: {countries: {DE: eu}}}\n", "regions.geoip.database", "is required"),
])
def test_a_wrong_regions_section_is_an_error_at_its_key_path(text, path, reason):
    found = errors(text)
    assert path in found, found
    assert reason in found[path]


def test_a_geoip_country_must_be_a_capital_iso_code_of_a_known_region(tmp_path):
    text = with_geoip(tmp_path, TWO + "regions:\n  home: us\n").replace("{DE: eu, US: us}", "{de: eu, FR: mars}")
    found = errors(text)
    assert "an ISO 3166 country code" in found["regions.geoip.countries.de"]
    assert "unknown region 'mars'" in found["regions.geoip.countries.FR"]


def test_a_pinned_region_must_serve_every_kind_of_request_some_provider_serves():
    text = TWO.replace("region: eu}", "region: eu, models: {m: {handler: chat}}}")
    found = errors(text + "regions: {home: us, residency: {ads: eu}}\n")
    assert "no provider in region 'eu' serves embeddings requests" in found["regions.residency.ads"]


def test_the_default_failover_order_is_the_other_regions_in_file_order_after_the_configured_ones():
    regions = parse_config(REGIONAL, env=SECRETS).regions
    assert regions is not None
    assert regions.order("ap") == ("ap", "us", "eu")  # failover: {ap: [us]}
    assert regions.order("eu") == ("eu", "us", "ap")
    assert regions.order("us") == ("us", "eu", "ap")


# ---------------------------------------------------------------- the plan


def plan():
    return make_plan(parse_config(REGIONAL, env=SECRETS))


@pytest.mark.parametrize(("region", "order"), [
    ("us", (US, EU, AP, "claude")),
    ("eu", (EU, US, AP, "claude")),
    ("ap", (AP, US, EU, "claude")),  # its configured failover: us before eu
])
def test_each_region_tries_its_own_providers_then_its_failover_order_then_those_without_a_region(region, order):
    view = plan().views[region]
    assert view.auto_chains["chat"].providers == order
    assert view.chain_for("chat", "gpt-4o").providers == order  # a name every region serves: its own first
    # The embeddings chains likewise, without the provider that serves none.
    assert view.auto_chains["embeddings"].providers == tuple(p for p in order if p != "claude")


def test_the_home_region_is_the_plan_itself_and_a_view_chain_shares_a_cluster_with_its_equal():
    p = plan()
    assert p.auto_chains["chat"].providers == (US, EU, AP, "claude")
    assert p.views["us"].auto_chains["chat"].cluster == p.auto_chains["chat"].cluster == "chain.openai-us"
    assert p.views["eu"].auto_chains["chat"].cluster == "chain.openai-eu"  # eu's own chain, as before
    assert p.views["ap"].chain_for("chat", "smart").providers == (US, AP, EU, "claude")  # only us has it
    claude_from_eu = p.views["eu"].chain_for("chat", "claude-3-haiku")
    assert claude_from_eu.providers == ("claude", EU, US, AP)
    assert claude_from_eu.cluster == "chain.claude@eu"
    assert len(set(p.chains)) == len(p.chains)


def test_a_pinned_regions_chains_hold_only_its_own_providers_and_serve_every_model_name():
    p = plan()
    pinned = p.views["eu.only"]
    assert pinned.pinned
    assert {provider for chain in (o.chain for o in pinned.models) for provider in chain.providers} == {EU}
    assert {(o.name, o.family) for o in pinned.models} == {(o.name, o.family) for o in p.models}
    # A name only another provider serves goes to the region's, as a failover would send it.
    assert pinned.chain_for("chat", "claude-3-haiku").cluster == pinned.auto_chains["chat"].cluster


def test_a_config_without_regions_has_no_region_views():
    text = REGIONAL.split("regions:")[0].replace("    region: eu\n", "").replace("    region: us\n", "")
    p = make_plan(parse_config(text.replace("    region: ap\n", ""), env=SECRETS))
    assert p.views == {}
    assert all("@" not in cluster for cluster in p.chains)


# ---------------------------------------------------------------- Envoy's resources


def _route_config(text: str = REGIONAL):
    (route_config,) = snapshot_of(text).of_type(ROUTE).values()
    return route_config


def test_the_lanes_lookups_pick_the_chain_by_pinned_client_then_region_header_then_country(tmp_path):
    route_config = _route_config(with_geoip(tmp_path))
    plugins = {p.extension.name: p for p in route_config.cluster_specifier_plugins}
    model_lane = plugins["hapax.model.chat"]
    assert regional_lookup(model_lane, {})["gpt-4o"] == "chain.openai-us"  # home
    assert regional_lookup(model_lane, {"x-hapax-region": "eu"})["gpt-4o"] == "chain.openai-eu"
    assert regional_lookup(model_lane, {"x-hapax-region": "ap"})["gpt-4o"] == "chain.openai-ap"
    # An alias only the us deployment has goes there first, then fails over in ap's order.
    assert regional_lookup(model_lane, {"x-hapax-region": "ap"})["smart"] == "chain.openai-us@ap"
    assert regional_lookup(model_lane, {"x-hapax-region": "mars"})["gpt-4o"] == "chain.openai-us"
    assert regional_lookup(model_lane, {wire.GEO_COUNTRY_HEADER: "DE"})["gpt-4o"] == "chain.openai-eu"
    assert regional_lookup(model_lane, {"x-hapax-region": "ap", wire.GEO_COUNTRY_HEADER: "DE"})["gpt-4o"] \
        == "chain.openai-ap"  # a trusted header before the country
    pinned = regional_lookup(model_lane, {wire.KEY_ID_HEADER: ADS_KEY_ID, "x-hapax-region": "us"})
    assert set(pinned.values()) == {"chain.openai-eu@eu.only"}
    unpinned = {wire.KEY_ID_HEADER: "ba9876543210", "x-hapax-region": "eu"}  # the web client's key
    assert regional_lookup(model_lane, unpinned)["gpt-4o"] == "chain.openai-eu"
    passthrough = plugins["hapax.passthrough.chat"]
    assert regional_lookup(passthrough, {"x-hapax-region": "eu"})["gpt-4o"] == "lane.openai-eu"
    assert regional_lookup(passthrough, {})["gpt-4o"] == "lane.openai-us"
    assert regional_lookup(passthrough, {wire.KEY_ID_HEADER: ADS_KEY_ID})["gpt-4o"] == "lane.openai-eu@eu.only"
    # Claude (no region: never a pinned request's) takes the region's chain, translated there.
    assert regional_lookup(passthrough, {wire.KEY_ID_HEADER: ADS_KEY_ID})["claude-3-haiku"] == "chain.openai-eu@eu.only"


def test_a_pinned_departments_lane_routes_use_its_regions_lookups_whatever_the_header():
    route_config = _route_config()
    plugins = {p.extension.name: p for p in route_config.cluster_specifier_plugins}
    ads = [r for r in route_config.virtual_hosts[0].routes
           if r.match.path == "/v1/ads/chat/completions" and _lane(r)]
    assert {r.route.cluster_specifier_plugin for r in ads} == {"hapax.passthrough.chat@eu.only",
                                                               "hapax.model.chat@eu.only"}
    for route in ads:
        for headers in ({}, {"x-hapax-region": "us"}):
            clusters = set(regional_lookup(plugins[route.route.cluster_specifier_plugin], headers).values())
            assert clusters <= {"chain.openai-eu@eu.only", "lane.openai-eu@eu.only"}, (route.name, clusters)
    others = [r for r in route_config.virtual_hosts[0].routes
              if r.match.path == "/v1/chat/completions" and _lane(r)]
    assert others and all("@" not in r.route.cluster_specifier_plugin for r in others)


def test_every_lookup_names_a_cluster_the_snapshot_has():
    snapshot = snapshot_of(REGIONAL)
    (route_config,) = snapshot.of_type(ROUTE).values()
    clusters = set(snapshot.of_type(CLUSTER))
    for plugin in route_config.cluster_specifier_plugins:
        if plugin.extension.name == ROUTER_CHAIN_PLUGIN:
            continue  # the chain the router step names (test_routes.py)
        for headers in ({}, {"x-hapax-region": "eu"}, {"x-hapax-region": "ap"}, {wire.KEY_ID_HEADER: ADS_KEY_ID}):
            for cluster in regional_lookup(plugin, headers).values():
                assert cluster in clusters, (plugin.extension.name, headers, cluster)


def _hcm(text: str):
    listener = snapshot_of(text).of_type(LISTENER)["hapax_http"]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def test_the_region_header_is_removed_before_anything_reads_it_unless_the_peer_is_trusted(tmp_path):
    names = [f.name for f in _hcm(with_geoip(tmp_path)).http_filters]
    assert names.index(regional.UNTRUSTED_REGION_FILTER) < names.index(regional.COUNTRY_FILTER) \
        < names.index(regional.GEOIP_FILTER) < names.index("hapax.json_to_metadata")
    (untrusted,) = [f for f in _hcm(REGIONAL).http_filters if f.name == regional.UNTRUSTED_REGION_FILTER]
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    assert untrusted.typed_config.Unpack(wrapped)
    (field_matcher,) = wrapped.xds_matcher.matcher_list.matchers
    trusted = ip_pb2.Ip()
    field_matcher.predicate.single_predicate.custom_match.typed_config.Unpack(trusted)
    assert [(r.address_prefix, r.prefix_len.value) for r in trusted.cidr_ranges] == [("10.0.0.0", 8),
                                                                                     ("2001:db8::", 32)]
    assert field_matcher.on_match.action.typed_config.type_url.endswith("SkipFilter")


def test_a_config_without_regions_has_no_region_filters():
    text = REGIONAL.split("regions:")[0]
    for region in ("eu", "us", "ap"):
        text = text.replace(f"    region: {region}\n", "")
    assert not [f for f in _hcm(text).http_filters if f.name.startswith("hapax.region") or "geo" in f.name]


# ---------------------------------------------------------------- the router step's pick


def test_the_router_step_picks_the_view_as_envoys_lookups_do(tmp_path):
    p = make_plan(parse_config(with_geoip(tmp_path), env=SECRETS))
    view = RuntimeView.from_proto(runtime(p, "v1"), frozenset({"openai", "anthropic", "ollama"}))
    regions = view.regions
    assert regions is not None
    assert regions.view_key({}, None) is None  # home: the runtime's own chains
    assert regions.view_key({"x-hapax-region": "eu"}, None) == "eu"
    assert regions.view_key({"x-hapax-region": "us"}, None) is None
    assert regions.view_key({"x-hapax-region": "eu.only"}, None) is None  # a view key, not a region
    assert regions.view_key({"x-hapax-region": "mars", wire.GEO_COUNTRY_HEADER: "DE"}, None) == "eu"
    assert regions.view_key({"x-hapax-region": "ap"}, regions.pinned_department("search", "ads")) == "eu.only"
    assert regions.chain_for("eu", "chat", "gpt-4o").cluster == "chain.openai-eu"
    assert regions.chain_for("eu.only", "chat", None).providers == (EU,)
    assert regions.chain_for("ap", "embeddings", None).providers == (AP, US, EU)


# ---------------------------------------------------------------- limits and the queue


def test_the_queue_and_the_reservation_take_the_requests_regional_chain():
    from ext_proc.admission import _first_provider, _highest_price
    from ext_proc.translators import TRANSLATORS
    from hapax.wire import AdmissionEntry

    text = REGIONAL + "queue: {max_waiting: 10}\npricing: {claude-3-haiku: {input: 100, output: 200}}\n"
    view = RuntimeView.from_proto(runtime(make_plan(parse_config(text, env=SECRETS)), "v1"), frozenset(TRANSLATORS))
    chat, ads = view.routes["/v1/chat/completions"], view.routes["/v1/ads/chat/completions"]
    asked = {AdmissionEntry.MODEL: "gpt-4o"}
    assert _first_provider(view, chat, asked) == US
    assert _first_provider(view, chat, {**asked, AdmissionEntry.REGION: "ap"}) == AP
    assert _first_provider(view, ads, {**asked, AdmissionEntry.REGION: "us"}) == EU  # pinned
    assert _first_provider(view, chat, {**asked, AdmissionEntry.KEY_ID: ADS_KEY_ID}) == EU  # a pinned client
    # The dearest provider a request may reach is its own chain's: claude (no region, dear) is on
    # every unpinned chain, never on a pinned one.
    assert _highest_price(view, chat, asked) == (100, 200)
    assert _highest_price(view, ads, asked) == view.providers[EU].price


def test_the_admission_descriptors_carry_the_region_with_regions_only(tmp_path):
    from control_plane.resources.admission import descriptor_actions, region_actions

    config = parse_config(with_geoip(tmp_path), env=SECRETS)
    headers = [a.request_headers.header_name for a in region_actions(config)]
    assert headers == ["x-hapax-region", wire.GEO_COUNTRY_HEADER]
    plain = parse_config(TWO.replace(", region: eu", "").replace(", region: us", ""), env=SECRETS)
    assert region_actions(plain) == []
    first = descriptor_actions(region_actions(config)[0], plain)[0]
    assert len(descriptor_actions(first, config)) == len(descriptor_actions(first, plain)) + 2


def test_hapax_validate_summarises_the_regions():
    from control_plane.config.load import summarize

    line = summarize(parse_config(REGIONAL, env=SECRETS))
    assert "regions eu, us, ap (home us), ads pinned to eu" in line
    assert "regions" not in summarize(parse_config(TWO.replace(", region: eu", "").replace(", region: us", "")))


def test_a_pinned_departments_lane_routes_retry_only_as_often_as_its_region_has_providers():
    route_config = _route_config()
    ads = [r for r in effective_routes(route_config.virtual_hosts[0])
           if r.match.path == "/v1/ads/chat/completions" and _lane(r)]
    # eu has one provider: one retry (a one-provider chain retries once), not the three of a
    # chain of every provider.
    assert {r.route.retry_policy.num_retries.value for r in ads} == {1}
    others = [r for r in effective_routes(route_config.virtual_hosts[0])
              if r.match.path == "/v1/chat/completions" and _lane(r)]
    assert {r.route.retry_policy.num_retries.value for r in others} == {3}


def test_a_pinned_region_uses_its_providers_even_those_left_out_of_the_preference():
    text = TWO + "provider_preference: [us]\nregions: {home: us, residency: {ads: eu}}\n"
    pinned = make_plan(parse_config(text)).views["eu.only"]
    assert {chain.providers for chain in pinned.auto_chains.values()} == {("eu",)}
    assert {o.chain.providers for o in pinned.models} == {("eu",)}


def test_a_pinned_requests_503_says_which_region_it_may_not_leave():
    import json

    from ext_proc.runtime import RegionRouting
    from ext_proc.steps.messages import unavailable_json

    assert RegionRouting.pinned_region("eu.only") == "eu"
    assert RegionRouting.pinned_region("eu") is None and RegionRouting.pinned_region(None) is None
    body = json.loads(unavailable_json({EU: "connection refused"}, "eu") or b"")
    assert body["error"]["message"] == ("No provider in region eu, which this request's department may not leave "
                                        f"(data residency), could serve the request: {EU}: connection refused.")
    assert json.loads(unavailable_json({EU: "connection refused"}) or b"")["error"]["message"] == (
        f"No provider could serve the request: {EU}: connection refused.")


def test_envoys_own_503_of_a_pinned_lane_request_says_where_it_must_stay():
    local = _hcm(REGIONAL).local_reply_config
    pinned = [m for m in local.mappers if "region eu, which this request" in json_text(m)]
    assert len(pinned) == 2  # the pinned clients' key ids, then the pinned routes' department
    first = min(list(local.mappers).index(m) for m in pinned)
    # Before Envoy's own words for a lane request (the last of the two replies that have them:
    # the first is marked for the router step, which gives the reasons).
    generic = max(i for i, m in enumerate(local.mappers) if json_text(m).startswith("No provider could serve"))
    assert first < generic
    plain = REGIONAL.split("regions:")[0].replace("    region: eu\n", "").replace("    region: us\n", "")
    assert not [m for m in _hcm(plain.replace("    region: ap\n", "")).local_reply_config.mappers
                if "data residency" in json_text(m)]


def json_text(mapper) -> str:
    """An OpenAI-shaped reply's message ("" for a Messages API route's twin, in Anthropic's shape)."""
    body = mapper.body_format_override.json_format.fields
    if "type" in body:
        return ""
    return body["error"].struct_value.fields["message"].string_value


@pytest.mark.parametrize("route_path", ["/v1/chat/completions", "/v1/ads/chat/completions"])
def test_the_router_step_and_envoys_lookups_pick_the_same_chain_for_every_request(tmp_path, route_path):
    import itertools

    from ext_proc.translators import TRANSLATORS

    text = with_geoip(tmp_path)
    (route_config,) = snapshot_of(text).of_type(ROUTE).values()
    plugins = {p.extension.name: p for p in route_config.cluster_specifier_plugins}
    (lane_route,) = [r for r in route_config.virtual_hosts[0].routes
                     if r.match.path == route_path and r.route.cluster_specifier_plugin.startswith("hapax.model.")]
    plugin = plugins[lane_route.route.cluster_specifier_plugin]
    view = RuntimeView.from_proto(runtime(make_plan(parse_config(text, env=SECRETS)), "v1"), frozenset(TRANSLATORS))
    route = view.routes[route_path]
    for region, country, key_id in itertools.product([None, "eu", "us", "ap", "mars", "eu.only"], [None, "DE", "US"],
                                                     [None, ADS_KEY_ID, "ba9876543210"]):
        headers = {k: v for k, v in {"x-hapax-region": region, wire.GEO_COUNTRY_HEADER: country,
                                     wire.KEY_ID_HEADER: key_id}.items() if v is not None}
        envoy = regional_lookup(plugin, headers)
        region_view = view.region_view(headers, route.labels.get("department"))
        for model in ("gpt-4o", "smart", "claude-3-haiku", "auto"):
            chain = view.chain_in(region_view, "chat", None if model == "auto" else model)
            assert chain is not None and envoy[model] == chain.cluster, (headers, model)


def test_a_configured_region_header_is_the_one_removed_and_read():
    text = REGIONAL.replace("  home: us\n", "  home: us\n  header: X-Edge-Region\n")
    (untrusted,) = [f for f in _hcm(text).http_filters if f.name == regional.UNTRUSTED_REGION_FILTER]
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    untrusted.typed_config.Unpack(wrapped)
    assert "x-edge-region" in str(wrapped.extension_config.typed_config.value, "latin-1")
    (route_config,) = snapshot_of(text).of_type(ROUTE).values()
    model_lane = next(p for p in route_config.cluster_specifier_plugins if p.extension.name == "hapax.model.chat")
    assert regional_lookup(model_lane, {"x-edge-region": "eu"})["gpt-4o"] == "chain.openai-eu"
    assert regional_lookup(model_lane, {"x-hapax-region": "eu"})["gpt-4o"] == "chain.openai-us"
    view = RuntimeView.from_proto(runtime(make_plan(parse_config(text, env=SECRETS)), "v1"),
                                  frozenset({"openai", "anthropic"}))
    assert view.region_view({"x-edge-region": "eu"}, None) == "eu"


def test_no_trusted_source_is_a_warning_that_the_header_is_never_honoured():
    def regions_warnings(text: str) -> list[tuple[str, str]]:
        return [(w.path, w.message) for w in parse_config(text).warnings if w.path.startswith("regions")]

    assert regions_warnings(TWO + "regions: {home: us}\n") == [
        ("regions.trusted_sources", "none: no peer's x-hapax-region header is honoured, so requests take their "
                                    "country's region (geoip) or home's")]
    assert regions_warnings(TWO + "regions: {home: us, trusted_sources: [10.0.0.0/8]}\n") == []


def _lane(route) -> bool:
    """A lane's route: its cluster is looked up from the body's model (not the router step's chain)."""
    return route.route.cluster_specifier_plugin not in ("", ROUTER_CHAIN_PLUGIN)
