"""Which requests the control plane puts on the passthrough lane, and the Envoy config it takes."""

from __future__ import annotations

import re

from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.composite.v3 import composite_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from hypothesis import given
from hypothesis import strategies as st

from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources import body_routing, passthrough, provider_headers
from control_plane.resources.routes import ROUTER_CHAIN_PLUGIN
from control_plane.snapshot import (
    CLUSTER,
    LISTENER,
    ROUTE,
    SECRET,
    _aggregate_members,
    build_snapshot,
)
from hapax import wire
from tests.snapshots import EXT_PROC, effective_routes, lane_model_names, lane_route

CONFIG = """\
providers:
  openai:  {type: openai, model: gpt-4o, api_key: sk-openai-LANE, aliases: [fast]}
  second:  {type: openai, model: gpt-4o, api_key: sk-second-LANE, base_url: "http://10.0.0.2:8000/v1"}
  proxied: {type: openai, model: gpt-4o, api_key: sk-proxied-LANE, base_url: "https://gw.example.com/openai/v1"}
  vllm:    {type: openai, model: llama-3-8b, base_url: "http://10.0.0.3:8000/v1"}
  claude:  {type: anthropic, model: claude-3-haiku, api_key: sk-ant-LANE}
provider_preference: [openai, second, proxied, claude]
routes:
  - {path: /v1/chat/completions, handler: chat}
  - {path: /v1/completions, handler: completion}
  - {path: /v1/eng/chat/completions, handler: chat, metrics_labels: {department: engineering}}
"""
KEYS = ("sk-openai-LANE", "sk-second-LANE", "sk-proxied-LANE", "sk-ant-LANE")


def config():
    return parse_config(CONFIG)


def test_a_providers_own_model_name_takes_the_lane_of_its_api():
    lanes = {lane.model: lane for lane in make_plan(config()).lane_models}
    # Not "fast" (an alias, rewritten); claude's model on the Messages API's lane (its body as it came).
    assert sorted(lanes) == ["claude-3-haiku", "gpt-4o", "llama-3-8b"]
    claude = lanes["claude-3-haiku"]
    assert (claude.api, claude.providers, claude.base_path) == ("anthropic", ("claude",), "")
    gpt = lanes["gpt-4o"]
    assert gpt.first == "openai" and gpt.base_path == "/v1" and gpt.api == "openai"
    # Same model and API path: attempts stay on the lane; "proxied" has another base path.
    assert gpt.providers == ("openai", "second")
    assert lanes["llama-3-8b"].providers == ("vllm",)


def _routes():
    return effective_routes(res.route_configuration(make_plan(config())).virtual_hosts[0])


def test_lane_routes_go_before_their_ordinary_route_and_route_on_the_body_without_ext_proc():
    routes = res.route_configuration(make_plan(config()))
    names = [r.name for r in _routes()]
    chat = names.index("chat:/v1/chat/completions")
    # One route per API base path and chain shape, whatever the number of models: vllm's chain is longer.
    lanes = [n for n in names if n.startswith("passthrough:chat:/v1/chat/completions")]
    assert lanes == ["passthrough:chat:/v1/chat/completions", "passthrough:chat:/v1/chat/completions:2"]
    assert all(names.index(n) < chat for n in lanes)
    found = lane_route(routes, "/v1/eng/chat/completions", "gpt-4o", lane="passthrough")
    assert found is not None
    lane, cluster = found
    assert cluster == "lane.openai"  # the chain of the model's provider, with Envoy's keys
    assert lane_route(routes, "/v1/eng/chat/completions", "llama-3-8b", lane="passthrough")[1] == "lane.vllm"
    assert lane_route(routes, "/v1/eng/chat/completions", "fast", lane="passthrough") is None  # an alias
    matchers = {m.path[0].key: m.value for m in lane.match.dynamic_metadata}
    assert lane_model_names(matchers["model"]) == {"gpt-4o"}
    assert matchers["stream"].bool_match is False and matchers["stream"].HasField("bool_match")
    assert lane.route.prefix_rewrite == "/v1/chat/completions"  # the department path is the gateway's, not the API's
    assert lane.route.auto_host_rewrite.value
    assert lane.route.retry_policy.num_retries.value == 3  # one attempt per provider of the chain
    assert {"authorization", "x-api-key", "x-hapax-chain"} <= set(lane.request_headers_to_remove)
    # A query string would survive the rewrite: a request with one takes the model lane instead.
    path = next(m for m in lane.match.headers if m.name == ":path")
    assert path.string_match.exact == "/v1/eng/chat/completions"
    ext_proc = ext_proc_pb2.ExtProcPerRoute()
    lane.typed_per_filter_config[res.EXT_PROC_FILTER].Unpack(ext_proc)
    assert ext_proc.disabled
    labels = lane.metadata.filter_metadata["hapax"]
    assert labels["department"] == "engineering" and labels["lane"] == "passthrough"


def test_the_lanes_cluster_lookup_reads_the_model_json_to_metadata_read():
    # Envoy's matchers read filter state as a string; the lane model filter copies the model there.
    hcm = res.http_connection_manager(make_plan(config()))
    names = [f.name for f in hcm.http_filters]
    # Before the first filter that looks up the route (custom_response), after the body is read.
    assert names.index(passthrough.JSON_TO_METADATA_FILTER) + 1 == names.index(body_routing.LANE_MODEL_FILTER)
    copy = set_filter_state_pb2.Config()
    hcm.http_filters[names.index(body_routing.LANE_MODEL_FILTER)].typed_config.Unpack(copy)
    (value,) = copy.on_request_headers
    assert value.object_key == body_routing.MODEL_FILTER_STATE and value.skip_if_empty
    assert value.format_string.text_format_source.inline_string == "%DYNAMIC_METADATA(hapax.request:model)%"
    plugins = {p.extension.name for p in res.route_configuration(make_plan(config())).cluster_specifier_plugins}
    assert plugins == {"hapax.passthrough.chat", "hapax.passthrough.embeddings", "hapax.model.chat",
                       "hapax.model.embeddings", ROUTER_CHAIN_PLUGIN}


def test_routes_no_lane_request_can_take_do_not_parse_the_body_in_envoy():
    for route in _routes():
        parsed = passthrough.JSON_TO_METADATA_FILTER not in route.typed_per_filter_config
        # The model is copied for the lanes' cluster lookup exactly where the body is read.
        assert parsed == (body_routing.LANE_MODEL_FILTER not in route.typed_per_filter_config), route.name
        # Both lanes (the model lane serves /v1/completions too, and the standard
        # /v1/embeddings beside the configured routes has both) and the routes they are variants of.
        assert parsed == (route.HasField("route") and route.match.path in (
            "/v1/chat/completions", "/v1/completions", "/v1/eng/chat/completions", "/v1/embeddings",
            "/v1/messages", "/v1/responses")), route.name


def _upstream_filters(cluster):
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(opts)
    return list(opts.http_filters)


def _lane(model: str) -> passthrough.LaneModel:
    return next(lane for lane in make_plan(config()).lane_models if lane.model == model)


def test_each_lane_attempt_gets_its_providers_key_from_envoy_or_goes_to_ext_proc():
    first, codec = _upstream_filters(res.lane_cluster(make_plan(config()), _lane("gpt-4o")))
    assert first.name == passthrough.LANE_FILTER and codec.name == "envoy.filters.http.upstream_codec"
    composite = extension_matcher_pb2.ExtensionWithMatcher()
    first.typed_config.Unpack(composite)
    matchers = composite.xds_matcher.matcher_list.matchers
    # openai's chain: openai, second, proxied, claude; only the first two take the body as it is.
    assert [m.on_match.action.name for m in matchers] == ["passthrough.openai", "passthrough.second"]
    action = composite_pb2.ExecuteFilterAction()
    matchers[0].on_match.action.typed_config.Unpack(action)
    # The headers openai is not to be sent go first (the client's, another provider's key), then its key.
    allow_list, injector = action.filter_chain.typed_config
    assert (allow_list.name, injector.name) == ("provider_headers", "credential_injector")
    assert b"hapax_key.openai" in injector.typed_config.value
    fallback = composite_pb2.ExecuteFilterAction()
    composite.xds_matcher.on_no_match.action.typed_config.Unpack(fallback)
    assert fallback.typed_config.name == res.UPSTREAM_EXT_PROC_FILTER


def test_a_lane_has_its_own_copy_of_the_chain_and_chains_run_only_the_upstream_step():
    clusters = build_snapshot(config(), "v1", EXT_PROC).of_type(CLUSTER)
    lanes = sorted(name for name in clusters if name.startswith("lane."))
    # One per lane model and family (the standard embeddings route has its own), named after its provider.
    assert lanes == ["lane.claude", "lane.openai", "lane.openai.embeddings", "lane.vllm", "lane.vllm.embeddings"]
    for lane in lanes:
        chain = clusters["chain." + lane.removeprefix("lane.")]
        assert _aggregate_members(clusters[lane]) == _aggregate_members(chain)
        assert clusters[lane].circuit_breakers == chain.circuit_breakers
    # Every other request (router step, model lane) pays for no matching per attempt.
    for name in (n for n in clusters if n.startswith("chain.")):
        first, _ = _upstream_filters(clusters[name])
        assert first.name == res.UPSTREAM_EXT_PROC_FILTER, name


def test_provider_keys_reach_envoy_only_as_sds_secrets_of_the_lane_providers():
    snap = build_snapshot(config(), "v1", EXT_PROC)
    secrets = snap.of_type(SECRET)
    # vllm has no key, proxied no lane; claude's is the Messages lane's, the key alone (its x-api-key).
    assert sorted(secrets) == ["hapax_key.claude", "hapax_key.openai", "hapax_key.second"]
    assert secrets["hapax_key.second"].generic_secret.secret.inline_string == "Bearer sk-second-LANE"
    assert secrets["hapax_key.claude"].generic_secret.secret.inline_string == "sk-ant-LANE"
    for type_url in (CLUSTER, LISTENER, ROUTE):
        for msg in snap.of_type(type_url).values():
            blob = msg.SerializeToString()
            assert not any(key.encode() in blob for key in KEYS), type_url


# ---------------------------------------------------------------- what a lane attempt keeps of the headers

FORWARDING = CONFIG.replace("aliases: [fast]}", "aliases: [fast], forward_headers: [OpenAI-Organization]}")


def _lane_attempt_filters(text: str, provider: str) -> list:
    plan = make_plan(parse_config(text))
    lane = next(lane for lane in plan.lane_models if provider in lane.providers)
    first, _ = _upstream_filters(res.lane_cluster(plan, lane))
    composite = extension_matcher_pb2.ExtensionWithMatcher()
    first.typed_config.Unpack(composite)
    matcher = next(m for m in composite.xds_matcher.matcher_list.matchers
                   if m.on_match.action.name == f"passthrough.{provider}")
    action = composite_pb2.ExecuteFilterAction()
    matcher.on_match.action.typed_config.Unpack(action)
    return list(action.filter_chain.typed_config) or [action.typed_config]


def _removed_by(allow_list) -> re.Pattern:
    config = header_mutation_pb2.HeaderMutation()
    allow_list.typed_config.Unpack(config)
    [rule] = config.mutations.request_mutations
    return re.compile(rule.remove_on_match.key_matcher.safe_regex.regex)


CLIENT_HEADERS = ["cookie", "openai-organization", "openai-project", "anthropic-beta", "user-agent",
                  "x-stainless-os", "x-forwarded-for", "x-forwarded-proto", "forwarded", "x-real-ip",
                  "x-envoy-external-address", "x-envoy-attempt-count", "authorization", "x-request", "a", "hosts"]


def test_a_lane_attempt_removes_every_header_its_provider_is_not_sent():
    removed = _removed_by(_lane_attempt_filters(FORWARDING, "second")[0])
    assert [h for h in CLIENT_HEADERS if not removed.fullmatch(h)] == []
    kept = [*wire.PROVIDER_REQUEST_HEADERS, "host", ":path", ":authority", ":method", ":scheme"]
    assert [h for h in kept if removed.fullmatch(h)] == []


def test_a_lane_attempt_keeps_its_providers_forward_headers_only():
    openai, second = (_removed_by(_lane_attempt_filters(FORWARDING, name)[0]) for name in ("openai", "second"))
    assert not openai.fullmatch("openai-organization") and second.fullmatch("openai-organization")
    assert openai.fullmatch("openai-project") and openai.fullmatch("openai-organizations")


def test_a_keyless_lane_provider_gets_the_allow_list_and_no_key():
    [allow_list] = _lane_attempt_filters(CONFIG, "vllm")
    assert allow_list.name == "provider_headers"
    assert _removed_by(allow_list).fullmatch("authorization")  # another lane provider's key goes


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.!#$%&'*+^`|~", min_size=1, max_size=20)


@given(kept=st.sets(_NAME, max_size=8), names=st.lists(st.one_of(_NAME, st.sampled_from(
    [*wire.PROVIDER_REQUEST_HEADERS, "content-typ", "accept-encodings", "x-request-i"])), max_size=20))
def test_the_expression_matches_exactly_the_names_not_kept(kept, names):
    removed = re.compile(provider_headers.unlisted_names(kept))
    for name in [*names, *kept]:
        assert bool(removed.fullmatch(name)) == (name not in kept and name != "host"), name
    assert not removed.fullmatch(":path")
